"""How good a generator is: a fixed judge, the scores, and the report that puts them side by side.

- `judge`: the fixed MNIST classifier and its features of held-out real digits.
- `scores`: FID, intra-class FID, precision/recall, label accuracy, classifier score.
- `report`: `evaluate_generator` (all scores with their real-vs-real floors), `format_table`.
- `train_judge`: the script that made the shipped judge.
"""

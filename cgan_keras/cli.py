"""What the command-line tools share: a parser built from their docstring, and one-line user errors.

Importing this is cheap (no TensorFlow), so a CLI can check its arguments first.
"""

import argparse
import sys


def make_parser(doc, **kwargs):
    """Returns an `argparse.ArgumentParser` described by a CLI module's docstring.

    The first paragraph becomes the description; the rest (the copy-paste
    examples) the epilog, line breaks kept. `kwargs` go to the parser.
    """
    summary, examples = doc.split("\n\n", 1)
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(description=summary, epilog=examples, **kwargs)


def fail(prog, message):
    """Reports a user mistake in one line on stderr and exits with code 2 (argparse's convention)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)

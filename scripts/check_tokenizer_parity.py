"""Does deepalign read your checkpoint's tokenizer and chat template exactly as transformers does?

  pip install -e .[hf]
  python scripts/check_tokenizer_parity.py /ckpt/Llama-3.1-8B-Instruct /ckpt/Mistral-7B-Instruct-v0.3 ...

For each checkpoint directory it loads the tokenizer both ways (deepalign: `load_tokenizer`,
`ChatTemplate.from_pretrained`; transformers: `AutoTokenizer`, `apply_chat_template`,
`GenerationConfig`) and compares, on a fixed set of conversations (a system message,
several turns, unicode and emoji, an empty message, user text that spells special tokens,
a finished conversation) and texts: the special ids, the stop ids, the rendered text, its
ids, their decodings with and without special tokens, and the prompt ids the input
pipelines build. It prints one line per check (`ok` / `FAIL`, with the first difference)
and exits with status 1 if any check fails, 2 if a directory cannot be read.
Run it before training on a checkpoint deepalign was not tested on.
"""

from __future__ import annotations

import argparse
import sys

from deepalign.data import tokenizer_parity
from deepalign.errors import UserError


def check(directory: str, verbose: bool) -> bool:
  """Prints the checks of one checkpoint directory; True if all pass."""
  checks = tokenizer_parity.compare(tokenizer_parity.deepalign_view(directory),
                                    tokenizer_parity.transformers_view(directory))
  failed = [c for c in checks if not c.ok]
  for c in checks:
    if verbose or not c.ok or c.detail:
      print(f'{directory}: {c.line()}')
  print(f'{directory}: {len(checks) - len(failed)} of {len(checks)} checks agree with transformers')
  return not failed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('dirs', nargs='+', metavar='DIR', help='checkpoint directories (tokenizer files, template)')
  parser.add_argument('--quiet', action='store_true', help='print only failures, notes and the summary')
  args = parser.parse_args()
  ok = True
  for directory in args.dirs:
    try:
      ok = check(directory, verbose=not args.quiet) and ok
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  main()

"""The flags both "Generation only" benchmarks take (generation.py, hf_generation.py), defined once
so the two modules can be imported in one process (tests) without absl's duplicate-flag error."""

from absl import flags

PROMPTS = flags.DEFINE_string('prompts', None, 'W_TINY_prompts.npy (default: ../shared).')
ITERS = flags.DEFINE_integer('iters', 10, 'Timed calls (the median is reported).')
WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed calls first (absorb compilation and first-call costs).')

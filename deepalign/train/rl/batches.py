"""The RL batch: ordinary prompts plus a recovery sub-batch of harmful prompts, with joint state."""

from typing import Any, Iterator, Mapping

import numpy as np

RECOVERY_KEYS = {'prompt_tokens': 'recovery_prompt_tokens', 'prompt_mask': 'recovery_prompt_mask',
                 'harmful_response': 'recovery_harmful_response',
                 'harmful_response_len': 'recovery_harmful_response_len'}


class RLBatches:
  """Yields `prompt_dataset` batches, extended with the `recovery_*` keys of `rl_episodes` from
  a second pipeline over harmful prompts (None = no recovery rollouts). get_state/set_state
  carry both grain states, so a resumed run sees the same prompts."""

  def __init__(self, prompts: Iterator[dict], recovery: Iterator[dict] | None = None):
    self.prompts, self.recovery = prompts, recovery

  def __iter__(self) -> 'RLBatches':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self.prompts))
    if self.recovery is not None:
      rec = next(self.recovery)
      batch.update({new: np.asarray(rec[old]) for old, new in RECOVERY_KEYS.items()})
    return batch

  def get_state(self) -> dict[str, Any]:
    state = {'prompts': self.prompts.get_state()}
    if self.recovery is not None:
      state['recovery'] = self.recovery.get_state()
    return state

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.prompts.set_state(state['prompts'])
    if self.recovery is not None:
      self.recovery.set_state(state['recovery'])

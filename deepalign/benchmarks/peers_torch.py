"""The W-tiny work in plain torch + transformers, for `compare.py` (needs the `hf` extra).

Hand-written, eager torch, float32 on the CPU, the same math as ../shared/W_TINY.md and the
same weights as deepalign's side (loaded with `from_pretrained` from deepalign's HF export):

  generation:     `LlamaForCausalLM.generate` (sampling, temperature 1, no top-k / top-p,
                  `min_new_tokens` = `max_new_tokens` so every row gets exactly N tokens, KV cache)
  PPO iteration:  `generate` (rollout log-probs from its logits, as deepalign takes them from its
                  sampler), no-grad reference / value / reward forwards, k1 KL (0.05) in the
                  reward, GAE (gamma 1, lambda 0.95), whitened advantages, one epoch of 2
                  shuffled minibatches: clipped policy + clipped value loss (vf_coef 0.1),
                  backward, one AdamW step (lr 1e-5) over policy + value
  DPO step:       policy forward + backward over the 2B stacked chosen / rejected rows, the
                  frozen reference forward, sigmoid loss (beta 0.1) on summed response log-probs,
                  one AdamW step (lr 1e-5)

The LM head runs where deepalign's runs: on the N response positions in the PPO forwards
(`logits_to_keep`), on every position in the DPO step. Imported only by `compare.py` after it
has checked that torch and transformers import; deepalign itself never imports them.
"""

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # weights come from a local export; never the hub

from typing import Any, Callable

import numpy as np
import torch
import transformers

from deepalign.benchmarks import w_tiny

LEARNING_RATE = 1e-5
PPO_KL_COEF, GAMMA, LAM = 0.05, 1.0, 0.95
CLIP_EPS, VALUE_CLIP_EPS, VF_COEF, MINIBATCHES = 0.2, 0.2, 0.1, 2
DPO_BETA = 0.1

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def versions() -> dict[str, Any]:
  return {'torch_version': torch.__version__, 'transformers_version': transformers.__version__,
          'torch_threads': torch.get_num_threads()}


def load_lm(path: str) -> 'transformers.LlamaForCausalLM':
  """The exported policy (or reference) as a float32 LlamaForCausalLM."""
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def load_scalar(path: str) -> 'transformers.LlamaForSequenceClassification':
  """The exported value / reward model (backbone + 1-output `score` Linear)."""
  return transformers.AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)


def adamw(params) -> torch.optim.Optimizer:
  """W_TINY.md's optimizer: AdamW lr 1e-5, betas 0.9 / 0.999, eps 1e-8, no weight decay."""
  return torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=0.0)


def sample(policy, prompts: torch.Tensor, new_tokens: int, with_logits: bool = False):
  """`generate` exactly as W_TINY.md samples: temperature 1, no filters, N tokens per row."""
  return policy.generate(
      input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
      temperature=w_tiny.TEMPERATURE, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
      min_new_tokens=new_tokens, use_cache=True, pad_token_id=w_tiny.PAD_ID,
      eos_token_id=w_tiny.EOS_ID, return_dict_in_generate=with_logits, output_logits=with_logits)


def response_logprobs(policy, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
  """log pi(y_t | y_<t) of the N response tokens [B, N]: the LM head on the N positions that
  predict them only (P - 1 .. P + N - 2)."""
  n = sequences.shape[1] - prompt_len
  logits = policy(input_ids=sequences, logits_to_keep=n + 1).logits[:, :-1]
  return gather_logprobs(logits, sequences[:, prompt_len:])


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
  return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def response_values(value_model, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
  """V at the position that predicts each response token [B, N] (the head at every position)."""
  n = sequences.shape[1] - prompt_len
  hidden = value_model.model(input_ids=sequences).last_hidden_state
  return value_model.score(hidden).squeeze(-1)[:, prompt_len - 1:prompt_len - 1 + n]


def reward_scores(reward_model, sequences: torch.Tensor) -> torch.Tensor:
  """The reward head at the last position [B] (not the class's pad-based pooling: a sampled
  token may equal the pad id)."""
  hidden = reward_model.model(input_ids=sequences).last_hidden_state[:, -1]
  return reward_model.score(hidden).squeeze(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
  """A_t = delta_t + gamma lam A_{t+1}, delta_t = r_t + gamma V_{t+1} - V_t, V_N = 0."""
  n = rewards.shape[1]
  last = torch.zeros_like(rewards[:, 0])
  advantages = []
  for t in reversed(range(n)):
    next_value = values[:, t + 1] if t + 1 < n else torch.zeros_like(last)
    last = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * last
    advantages.append(last)
  return torch.stack(advantages[::-1], dim=1)


def whiten(x: torch.Tensor) -> torch.Tensor:
  return (x - x.mean()) / torch.sqrt(x.var(correction=0) + 1e-8)


class TorchPPO:
  """One W-tiny PPO iteration per `step()`."""

  def __init__(self, dirs: dict[str, str], prompts: np.ndarray, new_tokens: int):
    self.policy, self.value = load_lm(dirs['policy']), load_scalar(dirs['value'])
    self.reference = load_lm(dirs['policy']).eval().requires_grad_(False)
    self.reward = load_scalar(dirs['reward']).eval().requires_grad_(False)
    self.optimizer = adamw([*self.policy.parameters(), *self.value.parameters()])
    self.prompts = torch.tensor(prompts, dtype=torch.long)
    self.new_tokens = new_tokens

  def step(self) -> float:
    p = self.prompts.shape[1]
    with torch.no_grad():
      out = sample(self.policy, self.prompts, self.new_tokens, with_logits=True)
      sequences = out.sequences
      old_logp = gather_logprobs(torch.stack(out.logits, dim=1), sequences[:, p:])
      ref_logp = response_logprobs(self.reference, sequences, p)
      old_values = response_values(self.value, sequences, p)
      rewards = -PPO_KL_COEF * (old_logp - ref_logp)
      rewards[:, -1] += reward_scores(self.reward, sequences)
      advantages = gae(rewards, old_values, GAMMA, LAM)
      returns = advantages + old_values
      advantages = whiten(advantages)
    loss = None
    for rows in torch.randperm(sequences.shape[0]).chunk(MINIBATCHES):
      logp = response_logprobs(self.policy, sequences[rows], p)
      values = response_values(self.value, sequences[rows], p)
      a, r, v_old = advantages[rows], returns[rows], old_values[rows]
      ratio = torch.exp(logp - old_logp[rows])
      pg_loss = torch.max(-a * ratio, -a * torch.clamp(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS)).mean()
      clipped = v_old + torch.clamp(values - v_old, -VALUE_CLIP_EPS, VALUE_CLIP_EPS)
      vf_loss = 0.5 * torch.max((values - r) ** 2, (clipped - r) ** 2).mean()
      loss = pg_loss + VF_COEF * vf_loss
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    return float(loss.detach())


class TorchDPO:
  """One W-tiny DPO step per `step()` on the fixed pairs (`dpo.pair_batch`)."""

  def __init__(self, dirs: dict[str, str], pairs: dict[str, np.ndarray], prompt_len: int):
    self.policy = load_lm(dirs['policy'])
    self.reference = load_lm(dirs['policy']).eval().requires_grad_(False)
    self.optimizer = adamw(self.policy.parameters())
    rows = np.concatenate([pairs['chosen_tokens'], pairs['rejected_tokens']], axis=0)
    self.rows = torch.tensor(rows, dtype=torch.long)
    self.prompt_len = prompt_len

  def sequence_logprobs(self, model) -> torch.Tensor:
    """Summed response log-probs of every row [2B]: the LM head on every position."""
    logits = model(input_ids=self.rows).logits[:, self.prompt_len - 1:-1]
    return gather_logprobs(logits, self.rows[:, self.prompt_len:]).sum(-1)

  def step(self) -> float:
    chosen, rejected = self.sequence_logprobs(self.policy).chunk(2)
    with torch.no_grad():
      ref_chosen, ref_rejected = self.sequence_logprobs(self.reference).chunk(2)
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = -torch.nn.functional.logsigmoid(DPO_BETA * margin).mean()
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return float(loss.detach())


class TorchGeneration:
  """W-tiny "Generation only" with `generate`, the initial policy."""

  def __init__(self, dirs: dict[str, str], prompts: np.ndarray, new_tokens: int):
    self.policy = load_lm(dirs['policy']).eval()
    self.prompts = torch.tensor(prompts, dtype=torch.long)
    self.new_tokens = new_tokens

  def step(self) -> torch.Tensor:
    with torch.inference_mode():
      out = sample(self.policy, self.prompts, self.new_tokens)
    if out.shape != (self.prompts.shape[0], self.prompts.shape[1] + self.new_tokens):
      raise RuntimeError(f'generate returned {tuple(out.shape)}; expected exactly '
                         f'{self.new_tokens} new tokens per row')
    return out


def setup(seed: int, threads: int) -> None:
  """torch's global generator (sampling, minibatch permutations) and its thread count."""
  torch.manual_seed(seed)
  if threads:
    torch.set_num_threads(threads)


def stepper(runner: Any) -> Callable[[int], Any]:
  """A `timing.time_calls` call for a runner with `step()` (torch returns when done)."""
  return lambda i: runner.step()

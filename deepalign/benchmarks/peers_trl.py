"""The W-tiny DPO and GRPO steps through TRL's trainers, for `compare.py` (needs `trl`).

Both trainers get the same weights as deepalign's side (deepalign's HF export, loaded with
`from_pretrained`; GRPOTrainer builds its reference from the same directory), float32 on the
CPU, and settings that make their step W_TINY.md's:

  DPOTrainer:   16 pairs per step (per_device_train_batch_size 16), sigmoid loss, beta 0.1, the
                reference forward on the fly (precompute_ref_log_probs False), AdamW lr 1e-5
                constant, no weight decay, no gradient clipping (max_grad_norm 0)
  GRPOTrainer:  4 prompts x num_generations 4 = 16 completions per step, max_completion_length
                64 with min_new_tokens 64 (EOS never ends a completion early), temperature 1,
                top_k 0, top_p 1, beta 0.04 (k3 KL), epsilon 0.2, num_iterations 1, loss_type
                'dapo' (token mean over the batch), scale_rewards 'group', the transformers
                `generate` path (no vLLM), same optimizer settings; the reward is the W-tiny
                reward model's head at the last position of prompt + completion, computed in a
                reward function over the token ids (no text round trip through a tokenizer)

The data is text in a word-level tokenizer whose words are the token ids ('t5 t2041 ...'), so
TRL's own tokenization yields exactly the W-tiny ids. A step's time is the wall time between
two `on_step_end` callbacks: everything the trainer does per step (batch collation, generation
and scoring for GRPO, forward, backward, optimizer), as a user running `trainer.train()` waits.
"""

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # weights come from a local export; never the hub

import tempfile
import time
import warnings
from typing import Any

import datasets
import numpy as np
import tokenizers
import torch
import transformers
import trl

from deepalign.benchmarks import peers_torch, w_tiny
from deepalign.benchmarks.timing import Timings

_SPECIAL = {w_tiny.PAD_ID: '<pad>', w_tiny.BOS_ID: '<bos>', w_tiny.EOS_ID: '<eos>'}

datasets.disable_progress_bars()


def versions() -> dict[str, Any]:
  return {'trl_version': trl.__version__}


def id_tokenizer(vocab: int) -> transformers.PreTrainedTokenizerFast:
  """A word-level tokenizer with one word per id: '<pad>' '<bos>' '<eos>' 't3' ... 't{V-1}'; it
  adds no special tokens, so `tokenizer(text(ids)).input_ids == ids`."""
  words = {_SPECIAL.get(i, f't{i}'): i for i in range(vocab)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token='<pad>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.decoder = tokenizers.decoders.WordPiece(prefix='##')  # joins words with spaces
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token='<pad>', bos_token='<bos>', eos_token='<eos>',
      unk_token='<pad>', padding_side='left')


def text(ids) -> str:
  return ' '.join(_SPECIAL.get(int(i), f't{int(i)}') for i in ids)


class StepTimer(transformers.TrainerCallback):
  """Wall and CPU seconds between consecutive `on_step_end`s (the first from `on_train_begin`)."""

  def __init__(self):
    self.times: list[float] = []
    self.cpu_times: list[float] = []
    self._last = (0.0, 0.0)

  def on_train_begin(self, args, state, control, **kwargs):
    self._last = (time.perf_counter(), time.process_time())

  def on_step_end(self, args, state, control, **kwargs):
    now = (time.perf_counter(), time.process_time())
    self.times.append(now[0] - self._last[0])
    self.cpu_times.append(now[1] - self._last[1])
    self._last = now


def _common_args(steps: int, seed: int) -> dict[str, Any]:
  """Trainer settings shared by both: W_TINY.md's AdamW, nothing else per step (no logging,
  checkpoints, evaluation, progress bars or clipping); the batch size is each trainer's."""
  return dict(output_dir=tempfile.mkdtemp(prefix='deepalign_trl_'), max_steps=steps,
              learning_rate=peers_torch.LEARNING_RATE, lr_scheduler_type='constant',
              warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
              adam_epsilon=1e-8, max_grad_norm=0.0, gradient_accumulation_steps=1, logging_strategy='no', save_strategy='no',
              eval_strategy='no', report_to='none', disable_tqdm=True, use_cpu=True,
              dataloader_num_workers=0, seed=seed, bf16=False, fp16=False)


def _timings(timer: StepTimer, warmup: int) -> Timings:
  if len(timer.times) <= warmup:
    raise RuntimeError(f'the trainer ran {len(timer.times)} steps; expected more than {warmup}')
  return Timings(times=tuple(timer.times[warmup:]), cpu_times=tuple(timer.cpu_times[warmup:]),
                 first_call_s=timer.times[0])


class TrlDPO:
  """DPOTrainer on the W-tiny pairs; `time(iters, warmup)` trains warmup + iters steps."""

  def __init__(self, dirs: dict[str, str], pairs: dict[str, np.ndarray], prompt_len: int,
               vocab: int, seed: int):
    self.dirs, self.seed = dirs, seed
    self.tokenizer = id_tokenizer(vocab)
    chosen, rejected = pairs['chosen_tokens'], pairs['rejected_tokens']
    self.rows = len(chosen)
    self.dataset_rows = [{'prompt': text(c[:prompt_len]), 'chosen': ' ' + text(c[prompt_len:]),
                          'rejected': ' ' + text(r[prompt_len:])}
                         for c, r in zip(chosen, rejected)]
    self.policy = peers_torch.load_lm(dirs['policy'])
    self.reference = peers_torch.load_lm(dirs['policy'])

  def time(self, iters: int, warmup: int) -> Timings:
    steps = iters + warmup
    # One epoch of `steps` batches of the same 16 pairs: no epoch boundary inside the timing.
    data = datasets.Dataset.from_list(self.dataset_rows * steps)
    timer = StepTimer()
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      args = {**_common_args(steps, self.seed), 'per_device_train_batch_size': self.rows}
      config = trl.DPOConfig(**args, beta=peers_torch.DPO_BETA,
                             loss_type=['sigmoid'], precompute_ref_log_probs=False,
                             max_length=None, padding_free=False)
      trainer = trl.DPOTrainer(model=self.policy, ref_model=self.reference, args=config,
                               train_dataset=data, processing_class=self.tokenizer,
                               callbacks=[timer])
      trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no metric dicts
      trainer.train()
    return _timings(timer, warmup)


class TrlGRPO:
  """GRPOTrainer on the first B / 4 W-tiny prompts, group 4."""

  def __init__(self, dirs: dict[str, str], prompts: np.ndarray, group: int, new_tokens: int,
               vocab: int, beta: float, seed: int):
    self.dirs, self.seed, self.group, self.new_tokens, self.beta = dirs, seed, group, new_tokens, beta
    self.tokenizer = id_tokenizer(vocab)
    self.prompts = prompts
    self.policy = peers_torch.load_lm(dirs['policy'])
    self.reward = peers_torch.load_scalar(dirs['reward']).eval().requires_grad_(False)

  def reward_function(self, prompts, completions, completion_ids, prompt_token_ids, **kwargs):
    """The W-tiny reward model's score of each prompt + completion (ids, not text)."""
    del prompts, completions, kwargs
    sequences = torch.tensor([list(p) + list(c) for p, c in zip(prompt_token_ids, completion_ids)],
                             dtype=torch.long)
    with torch.no_grad():
      return peers_torch.reward_scores(self.reward, sequences).tolist()

  def time(self, iters: int, warmup: int) -> Timings:
    steps = iters + warmup
    rows = [{'prompt': text(p), 'prompt_token_ids': [int(i) for i in p]} for p in self.prompts]
    data = datasets.Dataset.from_list(rows * steps)
    batch = len(self.prompts) * self.group
    args = {**_common_args(steps, self.seed), 'per_device_train_batch_size': batch}
    timer = StepTimer()
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      config = trl.GRPOConfig(**args, num_generations=self.group,
                              max_completion_length=self.new_tokens,
                              generation_kwargs={'min_new_tokens': self.new_tokens},
                              temperature=w_tiny.TEMPERATURE, top_k=0, top_p=1.0, beta=self.beta,
                              epsilon=peers_torch.CLIP_EPS, num_iterations=1, loss_type='dapo',
                              scale_rewards='group', use_vllm=False, log_completions=False,
                              remove_unused_columns=False, shuffle_dataset=False)

      def w_tiny_reward_model(**kwargs):  # TRL names the reward in its metrics after the function
        return self.reward_function(**kwargs)

      trainer = trl.GRPOTrainer(model=self.policy, reward_funcs=[w_tiny_reward_model], args=config,
                                train_dataset=data, processing_class=self.tokenizer,
                                callbacks=[timer])
      trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no metric dicts
      trainer.train()
    shortest = trainer.state.log_history[-1].get('completions/min_length', self.new_tokens)
    if shortest != self.new_tokens:
      raise RuntimeError(f'GRPOTrainer sampled a completion of {shortest} tokens; expected '
                         f'exactly {self.new_tokens}')
    return _timings(timer, warmup)

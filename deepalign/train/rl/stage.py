"""The PPO and GRPO stages: a policy from an earlier stage, a reward model, a judge, prompts.

`config.stage` 'ppo' or 'grpo'. The policy starts from `config.model.init_from` (the SFT
stage's workdir, or an HF checkpoint); the reference is a frozen copy of it; the reward model
comes from `config.rl.reward_from` (the reward-model stage's workdir or an HF
`*ForSequenceClassification` checkpoint); the harm judge is the exact judge of the synthetic
language (`config.rl.judge='env'`) or a classifier checkpoint. Each train step is ONE jitted
`ppo_step` / `grpo_step` (deepalign/train/rl/ppo_step.py, grpo_step.py); the generic loop adds
checkpoints (RL state + both prompt iterators), metrics, eval and resume.
"""

from typing import Any

import jax
import ml_collections
import optax

from deepalign import models
from deepalign.data import pipeline
from deepalign.errors import UserError
from deepalign.rollout.sampling_config import SamplingConfig
from deepalign.train import harm_eval, policy_init, stage_data
from deepalign.train.rl.grpo_step import GRPOConfig, make_grpo_step
from deepalign.train.rl.judges import ClassifierJudge, EnvJudge
from deepalign.train.rl.ppo_step import PPOConfig, make_ppo_step
from deepalign.train.rl.batches import RLBatches
from deepalign.train.rl.episodes import RolloutSpec
from deepalign.train.rl.state import RLModels, RLState, init_shared_value_head
from deepalign.train.task import Task

PyTree = Any
VALUE_INITS = ('reward', 'policy', 'shared')


def rollout_spec(config: ml_collections.ConfigDict, tokenizer: Any) -> RolloutSpec:
  r, rec = config.rl, config.recovery
  sampling = SamplingConfig(max_new_tokens=int(r.max_new_tokens), temperature=float(r.temperature),
                            top_k=int(r.top_k), top_p=float(r.top_p),
                            eos_id=tokenizer.eos_ids or tokenizer.eos_id,  # eot / end_of_turn too
                            # as the prompt pipeline pads: EOS when the tokenizer has no pad (Llama)
                            pad_id=tokenizer.eos_id if tokenizer.pad_id is None else tokenizer.pad_id,
                            stop_at_eos=bool(r.stop_at_eos))
  return RolloutSpec(
      sampling=sampling, group_size=int(config.grpo.group_size) if config.stage == 'grpo' else 1,
      recovery_coef=float(rec.coef) if rec.batch_size else 0.0,
      depth_distribution=rec.depth_distribution, max_depth=int(rec.max_depth),
      depth_p=float(rec.depth_p), depths=tuple(int(d) for d in rec.depths) or None,
      min_depth=int(rec.get('min_depth', 0)),
      missing_eos_penalty=float(r.missing_eos_penalty) or None,
      logits_chunk_size=int(config.model.get('logits_chunk_size', 0)),
      judge_ordinary=bool(r.get('judge_ordinary', True)))


def ppo_config(config: ml_collections.ConfigDict, spec: RolloutSpec) -> PPOConfig:
  p = config.ppo
  return PPOConfig(
      rollout=spec, kl_coef=float(p.kl_coef), kl_estimator=p.kl_estimator,
      kl_penalty_in=p.kl_penalty_in, adaptive_kl_target=float(p.adaptive_kl_target) or None,
      adaptive_kl_horizon=float(p.adaptive_kl_horizon), gamma=float(p.gamma), lam=float(p.lam),
      whiten_rewards=bool(p.whiten_rewards), whiten_advantages=bool(p.whiten_advantages),
      score_clip=float(p.score_clip) or None, epochs=int(p.epochs), minibatches=int(p.minibatches),
      clip_eps=float(p.clip_eps), value_clip_eps=float(p.value_clip_eps) or None,
      vf_coef=float(p.vf_coef), entropy_coef=float(p.entropy_coef),
      recovery_entropy_coef=_recovery_entropy_coef(config), aggregation=p.aggregation)


def _recovery_entropy_coef(config: ml_collections.ConfigDict) -> float | None:
  """recovery.entropy_coef (< 0: the same as ppo.entropy_coef)."""
  coef = float(config.recovery.get('entropy_coef', -1.0))
  return None if coef < 0 else coef


def grpo_config(config: ml_collections.ConfigDict, spec: RolloutSpec) -> GRPOConfig:
  g = config.grpo
  return GRPOConfig(rollout=spec, beta=float(g.beta), clip_eps=float(g.clip_eps),
                    clip_eps_high=float(g.clip_eps_high) or None, scale_by_std=bool(g.scale_by_std),
                    epochs=int(g.epochs), minibatches=int(g.minibatches), aggregation=g.aggregation)


def _load_scorer(directory: str, what: str, config: ml_collections.ConfigDict
                 ) -> tuple[models.Transformer, PyTree]:
  """A `head='score'` model from a stage workdir (its export/) or an HF classifier directory."""
  if not directory:
    raise UserError(f'config.rl.{what} must name the reward-model stage workdir or an HF '
                    '*ForSequenceClassification checkpoint directory')
  source = policy_init.hf_dir_of(directory)
  if source is None:
    raise UserError(f"config.rl.{what}='{directory}' has no config.json (nor export/config.json); "
                    'run the reward-model stage first')
  if config.model.get('abstract', False):  # deepalign.plan: config.json only, no weights
    model, params = policy_init.abstract_scorer(source, config, frozen_param_dtype(config))
  else:
    model, params = policy_init.load_frozen(source, config, frozen_param_dtype(config))
  if model.config.head != 'score':
    raise UserError(f"config.rl.{what}='{source}' is a {model.config.head!r} model; it needs a "
                    'score head (*ForSequenceClassification)')
  return model, params


def frozen_param_dtype(config: ml_collections.ConfigDict) -> str:
  """`rl.frozen_param_dtype` ('' = `model.param_dtype`): how the reference, reward model and
  judge are stored. They are never updated, so bfloat16 storage only rounds them once."""
  return config.rl.get('frozen_param_dtype', '') or config.model.param_dtype


def _tokenizer_fingerprint(tok: Any, probes: int = 512) -> tuple:
  """Vocab size, special ids and the text of `probes` ids spread over the vocabulary (decode
  works for every tokenizer; encode of a fixed text fails on a closed word vocabulary)."""
  ids = sorted(set(range(0, tok.vocab_size, max(tok.vocab_size // probes, 1))))
  return (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id,
          tuple(tok.decode([i], skip_special=False) for i in ids))


def scorer_tokenizer(source: str) -> Any | None:
  """The tokenizer saved with a scorer checkpoint directory, or None when it has none."""
  import os
  from deepalign.data import tokenizer as tokenizer_lib
  names = tokenizer_lib._HF_FILES + tokenizer_lib._SP_FILES
  if not any(os.path.isfile(os.path.join(source, n)) for n in names):
    return None
  return tokenizer_lib.load_tokenizer(source)


def check_scorer_tokenizer(what: str, scorer_vocab: int, scorer_tok: Any | None,
                           policy_vocab: int, policy_tok: Any) -> None:
  """UserError unless a reward model / judge reads the policy's token ids as the policy does.

  The scorers get the policy's ids unconverted: a judge of another tokenizer (Llama-Guard on
  a Gemma policy) would silently read other words, or clamped embedding rows past its vocab
  (issue 17 item 7). The scorer must embed every id the policy's tokenizer can emit; with a
  tokenizer saved beside it, that tokenizer must be the policy's (vocab size, special ids and
  the text of ids across the vocabulary); without one, its vocab size must equal the policy model's.
  """
  fix = (f'config.rl.{what} must be a model of the policy\'s tokenizer (same vocabulary); '
         're-train it on the policy\'s tokenizer or pick a policy of its tokenizer')
  if scorer_vocab < policy_tok.vocab_size:
    raise UserError(f'config.rl.{what} embeds {scorer_vocab} token ids but the policy\'s '
                    f'tokenizer has {policy_tok.vocab_size}: its ids past {scorer_vocab - 1} '
                    f'would be clamped; {fix}')
  if scorer_tok is not None:
    if _tokenizer_fingerprint(scorer_tok) != _tokenizer_fingerprint(policy_tok):
      raise UserError(f'config.rl.{what} was saved with another tokenizer than the policy\'s '
                      f'(vocab {scorer_tok.vocab_size} vs {policy_tok.vocab_size}, or other '
                      f'special ids or token texts); {fix}')
  elif scorer_vocab != policy_vocab:
    raise UserError(f'config.rl.{what} embeds {scorer_vocab} token ids, the policy {policy_vocab}, '
                    f'and no tokenizer is saved with it to show they agree; {fix}')


def _check_scorer(what: str, directory: str, model: models.Transformer,
                  policy: models.Transformer, tok: Any) -> None:
  source = policy_init.hf_dir_of(directory)
  check_scorer_tokenizer(what, model.config.vocab_size,
                         scorer_tokenizer(source) if source else None,
                         policy.config.vocab_size, tok)


def _judge(config: ml_collections.ConfigDict, data: stage_data.StageData) -> tuple[Any, PyTree]:
  if config.rl.judge == 'env':
    if data.env is None:
      raise UserError("config.rl.judge='env' needs config.data.source='harm_language'; for real "
                      'data name a classifier checkpoint directory in config.rl.judge')
    return EnvJudge(data.env), {}
  model, params = _load_scorer(config.rl.judge, 'judge', config)
  return ClassifierJudge(model), params


def _value(config: ml_collections.ConfigDict, policy: models.Transformer,
           policy_init_fn, reward: models.Transformer, reward_params: PyTree):
  """(value model or None, init(rng) -> value params): TRL initializes the critic from the
  reward model; 'policy' = the policy's body with a fresh head; 'shared' = a head on the trunk."""
  how = config.ppo.value_init
  if how not in VALUE_INITS:
    raise UserError(f"config.ppo.value_init='{how}' is unknown; use one of {', '.join(VALUE_INITS)}")
  if how == 'shared':
    return None, lambda rng: init_shared_value_head(policy.config.hidden_size, rng)
  if how == 'reward':
    # Trained: the policy's remat and master-weight dtype, whatever the frozen reward's storage.
    value = models.Transformer(reward.config.replace(
        head='value', remat=config.model.remat, param_dtype=config.model.param_dtype))
    return value, lambda rng: policy_init.cast_floats(reward_params, config.model.param_dtype)
  value = models.Transformer(policy.config.replace(head='value', num_labels=1))
  return value, lambda rng: policy_init.with_score_head(policy_init_fn(rng), value.config, rng)


def build_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
  del workdir
  is_ppo = config.stage == 'ppo'
  data = stage_data.load(config)
  tok, tmpl = data.tokenizer, data.template
  policy, policy_init_fn = policy_init.build(config, tok, head='lm')
  reward, reward_params = _load_scorer(config.rl.reward_from, 'reward_from', config)
  # At the boundary: the scorers read the policy's ids (before anything is written).
  _check_scorer('reward_from', config.rl.reward_from, reward, policy, tok)
  judge, judge_params = _judge(config, data)
  if isinstance(judge, ClassifierJudge):
    _check_scorer('judge', config.rl.judge, judge.model, policy, tok)
  value, value_init_fn = _value(config, policy, policy_init_fn, reward, reward_params) if is_ppo \
      else (None, None)
  rl_models = RLModels(policy=policy, reward=reward, judge=judge, value=value)
  spec = rollout_spec(config, tok)
  step_config = ppo_config(config, spec) if is_ppo else grpo_config(config, spec)

  def init_params(rng):
    k_policy, k_value = jax.random.split(rng)
    policy_params = policy_init_fn(k_policy)
    reference = policy_init.cast_floats(policy_params, frozen_param_dtype(config))
    params = {'policy': policy_params, 'reference': reference, 'reward': reward_params,
              'judge': judge_params}
    if value_init_fn is not None:
      params['value'] = value_init_fn(k_value)
    return policy_init.traceable(params)  # an abstract plan's frozen models are shapes

  def create_state(params, tx, rng):
    return RLState.create(policy=params['policy'], reference=params['reference'],
                          reward=params['reward'], judge=params['judge'], tx=tx, rng=rng,
                          kl_coef=float(config.ppo.kl_coef) if is_ppo else 0.0,
                          value=params.get('value'))

  def make_step(tx: optax.GradientTransformation, schedule, grad_accum_steps: int = 1,
                state_shardings=None, metrics_sharding=None):
    del grad_accum_steps  # one optax state; MultiSteps accumulates over minibatches
    make = make_ppo_step if is_ppo else make_grpo_step
    step = make(rl_models, step_config, tx, state_shardings, metrics_sharding, schedule)
    return lambda state, frozen, batch: step(state, batch)

  prompts = stage_data.records(config, data, 'harmful_prompt', 'train')
  n_recovery = int(config.recovery.batch_size)
  harmful_prompts = _harmful(prompts) if n_recovery else None

  def train_iterator():
    main = iter(pipeline.prompt_dataset(prompts, tok, tmpl,
                                        stage_data.pipeline_config(config, config.train.batch_size)))
    rec = None
    if n_recovery:
      rec = iter(pipeline.prompt_dataset(
          harmful_prompts, tok, tmpl, stage_data.pipeline_config(config, n_recovery, seed_offset=1)))
    return RLBatches(main, rec)

  harm = harm_eval.held_out_harm_eval(
      config, data, config.rl.harm_eval, config.train.batch_size, config.rl.eval_batches,
      config.rl.harm_eval_depths, int(config.rl.max_new_tokens))

  def eval_fn(params):
    return harm(policy, params['policy'])

  axes = {'policy': models.logical_axes(policy), 'reference': models.logical_axes(policy),
          'reward': models.logical_axes(reward),
          'judge': (models.logical_axes(judge.model) if isinstance(judge, ClassifierJudge)
                    else {})}
  if is_ppo:
    axes['value'] = (models.logical_axes(value) if value is not None
                     else {'kernel': ('embed', None)})
  return Task(init_params=init_params, loss_fn=None, train_iterator=train_iterator,
              eval_fn=eval_fn, finish=policy_init.exporting_finish(policy, 'policy'),
              param_axes=axes, create_state=create_state, make_step=make_step,
              updates_per_batch=updates_per_batch(step_config))


def updates_per_batch(step_config: PPOConfig | GRPOConfig) -> int:
  """`tx.update` calls per batch: one per minibatch of every epoch (the LR schedule's unit)."""
  return int(step_config.epochs) * int(step_config.minibatches)


def _harmful(records: Any) -> list:
  """The harmful prompts with a harmful response (recovery rollouts prefill it)."""
  rows = [records[i] for i in range(len(records))]
  rows = [r for r in rows if r.get('target') and r.get('is_harmful', True)]
  if not rows:
    raise UserError('config.recovery.batch_size > 0 but the prompt data has no harmful prompt with '
                    "a harmful response ('target'); use AdvBench-style data or set "
                    'config.recovery.batch_size=0')
  return rows

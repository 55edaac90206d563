"""The RL stages (PPO, GRPO) and their fused steps.

`stage.py` builds the Task from a config; `ppo_step.py` / `grpo_step.py` are the ONE-jit steps;
`episodes.py` samples and scores ordinary and recovery rollouts, `collect.py` adds the old and
reference log-probs, `minibatches.py` runs the epochs x minibatches updates; `state.py` holds the
RL train state and its models, `sharding.py` its placement, `batches.py` the prompt iterators,
`judges.py` the harm judges.
"""

"""Training: the train state, optimizers, the generic loop (metrics, orbax checkpoints, exact
resume, SIGTERM), the stages a config names (`stages.py`: sft, reward_model, dpo), and the
RL stages with their fused steps (`rl/`).

Modules are imported where used (`from deepalign.train import loop`), so importing the
package stays cheap for the command line.
"""

"""Launching deepalign beyond one command: config-override sweeps (`launch.sweep`), their summary
(`launch.summarize`), and Cloud TPU VMs, queued resources and GKE JobSets (`launch.tpu`)."""

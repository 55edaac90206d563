"""A Kubernetes JobSet that runs one command on every host of a GKE TPU slice.

The shape of GKE's multi-host TPU examples: one replicated Job of `hosts` pods (parallelism =
completions = hosts, one pod per TPU VM node, `google.com/tpu` = the chips of a host), node
selectors for the accelerator and topology, the exclusive-topology annotation (one slice's pods
on one node pool), host networking for the ICI/DCN ports, and `failurePolicy.maxRestarts`: a
preempted or failed pod restarts the whole JobSet, and the run resumes from its checkpoint in the
gs:// workdir. JAX's `jax.distributed.initialize()` finds the coordinator and process id from the
JobSet's environment on GKE. Written as JSON, which `kubectl apply -f` reads like YAML.
Schema: jobset.x-k8s.io/v1alpha2 (JobSet), batch/v1 JobSpec, core/v1 PodSpec.
"""

from __future__ import annotations

from typing import Any, Sequence

from launch.accelerators import Slice

API_VERSION = 'jobset.x-k8s.io/v1alpha2'
# What the JobSet, Job and Pod schemas require of this manifest (tests check them).
REQUIRED = {
    'jobset': ('apiVersion', 'kind', 'metadata.name', 'spec.replicatedJobs'),
    'replicated_job': ('name', 'template.spec.template.spec.containers'),
    'container': ('name', 'image'),
}


def manifest(name: str, tpu: Slice, image: str, command: Sequence[str], max_restarts: int = 3,
             num_slices: int = 1) -> dict[str, Any]:
  """The JobSet of `command` (argv) on every host of `num_slices` slices of `tpu`."""
  container = {
      'name': 'deepalign',
      'image': image,
      'command': list(command),
      'ports': [{'containerPort': 8471}, {'containerPort': 8080}],  # TPU ICI/DCN, jax coordinator
      'securityContext': {'privileged': True},
      'resources': {'limits': {'google.com/tpu': tpu.chips_per_host}},
  }
  pod = {
      'restartPolicy': 'Never',  # the JobSet restarts (failurePolicy), not the kubelet
      'hostNetwork': True,
      'dnsPolicy': 'ClusterFirstWithHostNet',
      'nodeSelector': {'cloud.google.com/gke-tpu-accelerator': tpu.gke_accelerator,
                       'cloud.google.com/gke-tpu-topology': tpu.topology},
      'containers': [container],
  }
  job = {
      'parallelism': tpu.hosts,
      'completions': tpu.hosts,
      'backoffLimit': 0,
      'template': {'spec': pod},
  }
  return {
      'apiVersion': API_VERSION,
      'kind': 'JobSet',
      'metadata': {'name': name,
                   'annotations': {'alpha.jobset.sigs.k8s.io/exclusive-topology': 'cloud.google.com/gke-nodepool'}},
      'spec': {
          'failurePolicy': {'maxRestarts': max_restarts},
          'replicatedJobs': [{'name': 'slice', 'replicas': num_slices, 'template': {'spec': job}}],
      },
  }

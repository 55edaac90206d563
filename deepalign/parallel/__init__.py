"""Device mesh ('data', 'fsdp', 'tensor'), logical-axis sharding rules, batch placement, multi-host start-up."""

from deepalign.parallel.activation_context import activation_sharding, with_activation_sharding
from deepalign.parallel.batch import batch_axes, batch_sharding, data_parallel_size, host_batch_slice, shard_batch
from deepalign.parallel.config import get_config
from deepalign.parallel.distributed import initialize_distributed
from deepalign.parallel.mesh import MESH_AXES, make_mesh, mesh_from_config, parse_axis_types, resolve_mesh_shape
from deepalign.parallel.topology import TOPOLOGIES, Topology, get_topology
from deepalign.parallel.rules import (DEFAULT_RULES, logical_to_spec, normalize_rules, param_shardings, param_specs,
                                      shard_params, sharded_init)

__all__ = [
    'activation_sharding', 'with_activation_sharding',
    'DEFAULT_RULES', 'MESH_AXES', 'batch_axes', 'batch_sharding', 'data_parallel_size', 'get_config',
    'host_batch_slice', 'initialize_distributed', 'logical_to_spec', 'make_mesh', 'mesh_from_config',
    'normalize_rules', 'param_shardings', 'param_specs', 'parse_axis_types', 'resolve_mesh_shape', 'shard_batch',
    'shard_params', 'sharded_init', 'TOPOLOGIES', 'Topology', 'get_topology',
]

"""The `parallel` section of a config: mesh, axis types, logical-axis rules, multi-host start-up.

    config.parallel = parallel.get_config()
    --config.parallel.mesh_shape.tensor=4 --config.parallel.mesh_shape.data=-1
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from deepalign.parallel.rules import DEFAULT_RULES


def get_config() -> ml_collections.ConfigDict:
  """Defaults: all devices on 'data' (pure data parallelism), Auto axes, DEFAULT_RULES, one host.

  `topology` names the slice the run is sized for (deepalign/parallel/topology.py: chips and HBM
  per chip); `deepalign.plan` compiles the step for it. The mesh takes the devices that exist.
  """
  return ml_collections.ConfigDict({
      'topology': 'cpu',
      'mesh_shape': {'data': -1, 'fsdp': 1, 'tensor': 1},
      'axis_types': 'auto',
      'rules': DEFAULT_RULES,
      'distributed': {
          'enabled': False,
          'coordinator_address': config_dict.placeholder(str),
          'num_processes': config_dict.placeholder(int),
          'process_id': config_dict.placeholder(int),
          'local_device_ids': config_dict.placeholder(tuple),
          'initialization_timeout': 300,
      },
  })

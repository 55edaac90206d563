"""Which recorded config fields decide that a workdir holds another run (workdir_check)."""

from deepalign.train.workdir_check import identity_changes

OLD = {'stage': 'ppo', 'model': {'hidden_size': 64, 'remat': False}}  # before scan_layers existed


def test_a_field_added_later_at_its_default_is_no_change():
  new = {'stage': 'ppo', 'model': {'hidden_size': 64, 'remat': 'none', 'scan_layers': False,
                                   'logits_chunk_size': 0}}
  assert identity_changes(OLD, new) == []


def test_architecture_and_layout_changes_still_count():
  new = {'stage': 'ppo', 'model': {'hidden_size': 128, 'scan_layers': True}}
  assert identity_changes(OLD, new) == ['model.hidden_size: 64 -> 128',
                                        'model.scan_layers: None -> True']
  assert identity_changes(OLD, {**OLD, 'stage': 'grpo'}) == ["stage: 'ppo' -> 'grpo'"]


def test_how_a_step_runs_is_not_which_run_it_is():
  new = {'stage': 'ppo', 'model': {'hidden_size': 64, 'remat': 'full', 'logits_chunk_size': 64}}
  assert identity_changes(OLD, new) == []

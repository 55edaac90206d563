"""Measurements of shallow vs. deep alignment (DESIGN.md "Theory").

Exact mode (tabular policies, by enumeration): `TabularPolicy`, `martingale`,
`exact_gradients`, `equilibrium`, `tabular_harm`.
Monte-Carlo estimators (any policy, through small function interfaces):
`estimate_harm_martingale`, `per_position_grad_norms`, `kl_profile_of_models`, `prefill_asr`
(`prefill_rates`: several judges, one generation), `benign_eval`; `model_adapters` plugs in a Flax model, `rollout.generate` and a judge.
Report: `deepalign.analysis.report.write_report` (imported on use: it loads matplotlib).
"""

from deepalign.analysis import equilibrium, exact_gradients, martingale, tabular_harm
from deepalign.analysis.gradient_profile import GradNormProfile, per_position_grad_norms
from deepalign.analysis.harm_martingale_mc import MartingaleEstimate, estimate_harm_martingale
from deepalign.analysis.kl_profile import (KLProfile, kl_per_position, kl_per_position_sampled,
                                           kl_profile_of_models)
from deepalign.analysis.model_adapters import (GenerateContinueFn, ModelLogitsFn, ModelLogprobFn,
                                               PromptJudge)
from deepalign.analysis.prefill_attack import (DEFAULT_DEPTHS, benign_eval, prefill_asr,
                                               prefill_rates)
from deepalign.analysis.tabular import TabularPolicy

__all__ = [
    'DEFAULT_DEPTHS', 'GenerateContinueFn', 'GradNormProfile', 'KLProfile', 'MartingaleEstimate',
    'ModelLogitsFn', 'ModelLogprobFn', 'PromptJudge', 'TabularPolicy', 'benign_eval',
    'equilibrium', 'estimate_harm_martingale', 'exact_gradients', 'kl_per_position',
    'kl_per_position_sampled', 'kl_profile_of_models', 'martingale', 'per_position_grad_norms',
    'prefill_asr', 'prefill_rates', 'tabular_harm',
]

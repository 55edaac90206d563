"""TFDS builders for the datasets deepalign reads: array_record output, read with `as_data_source`, no TensorFlow.

  from deepalign.data import builders
  b = builders.prepare(builders.HhRlhf, data_dir=DATA, manual_dir=HH_DIR, config='harmless_base')
  records = b.as_data_source('train')      # records[i]: dict, text fields as UTF-8 bytes
  builders.decode_record(records[0])       # the CONTRACTS record: text as str

Real formats read from a local manual_dir (nothing is downloaded; each builder's
MANUAL_DOWNLOAD_INSTRUCTIONS says where the release is and which files to put there):
  HhRlhf (hh_rlhf)                 Anthropic HH-RLHF              -> preference
  HhRedTeam (hh_red_team)          HH-RLHF red-team-attempts      -> harmful_prompt (first Human turns)
  PkuSafeRlhf (pku_safe_rlhf)      PKU-SafeRLHF, 'safer'/'better' -> preference + chosen_safe, rejected_safe
  AdvBench (adv_bench)             AdvBench harmful_behaviors.csv -> harmful_prompt
  HexPhi (hex_phi)                 HEx-PHI category files         -> harmful_prompt
  SafetyRecovery (safety_recovery) recovery triples (or Qi et al.'s layout) -> recovery
  SftConversations (sft_conversations) `messages` JSON lines      -> sft
  PromptList (prompt_list)         your own prompt lists (JSON lines) -> harmful_prompt (benign too)
Generated (no manual_dir): HarmLanguageDataset (harm_language), configs '<size>-<kind>'.
"""

from deepalign.data.builders.advbench import AdvBench
from deepalign.data.builders.decoded import decode_record
from deepalign.data.builders.decoded import read_split
from deepalign.data.builders.harm_language import HarmLanguageBuilderConfig
from deepalign.data.builders.harm_language import HarmLanguageDataset
from deepalign.data.builders.harm_language import harm_language_config
from deepalign.data.builders.hex_phi import HexPhi
from deepalign.data.builders.hh_red_team import HhRedTeam
from deepalign.data.builders.hh_rlhf import HhRlhf
from deepalign.data.builders.hh_rlhf import HhRlhfConfig
from deepalign.data.builders.manual_builder import ManualBuilder
from deepalign.data.builders.manual_builder import ManualConfig
from deepalign.data.builders.manual_builder import configured
from deepalign.data.builders.manual_builder import prepare
from deepalign.data.builders.pku_saferlhf import PkuSafeRlhf
from deepalign.data.builders.pku_saferlhf import PkuSafeRlhfConfig
from deepalign.data.builders.prompt_list import PromptList
from deepalign.data.builders.safety_recovery import SafetyRecovery
from deepalign.data.builders.sft_conversations import SftConversations

# Builder classes by their TFDS name, for configs and the command line.
BUILDERS = {cls.name: cls for cls in (HhRlhf, HhRedTeam, PkuSafeRlhf, AdvBench, HexPhi, SafetyRecovery, SftConversations,
                                      PromptList, HarmLanguageDataset)}

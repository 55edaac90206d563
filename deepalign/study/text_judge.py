"""A judge that reads text: the evaluated model's prompt and response, decoded, then encoded again
with the judge checkpoint's own tokenizer and chat template.

A judge that shares the policy's tokenizer can read its token ids (`train.rl.judges.ClassifierJudge`,
used inside the jitted RL step). Real judges rarely do: Llama Guard has its own vocabulary and a
chat template that wraps the conversation in its safety instructions. Two kinds are read:

  causal LM (a generative guard such as Llama Guard): the conversation rendered with the judge's
      template and its assistant header (`add_generation_prompt`), then
      h = p(unsafe) / (p(unsafe) + p(safe)) of its first answer token, with logits / T;
      `unsafe` / `safe` are the first tokens of the configured answer words.
  *ForSequenceClassification (one label): the conversation rendered without a generation prompt,
      h = sigmoid(score / T) at the last token.

Without a chat template in the judge directory the judge reads `prompt + "\\n\\n" + response`.
The prompt is the user's text: the evaluated model's chat markup is cut off (`user_prompts`).
"""

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.errors import UserError

_SENTINEL = '\u2063deepalign-user-text\u2063'  # invisible separator: never in a real prompt
_LENGTH_BUCKET = 32  # pad judge inputs to a multiple: a few compiled shapes, not one per batch


def user_prompts(tokenizer: Any, template: Any, prompt_tokens: np.ndarray,
                 prompt_mask: np.ndarray) -> list[str]:
  """The user's text of each templated prompt row [N, P] (left-padded, mask 1 = real token).

  The template rendered around a sentinel gives the text before and after the user's words; a
  row whose decoded text does not show that frame (a tokenizer that does not round-trip) falls
  back to its decoding without special tokens.
  """
  from deepalign.data.tokenize_records import template_wrote_bos
  framed = template.render([{'role': 'user', 'content': _SENTINEL}], add_generation_prompt=True)
  head, _, tail = framed.partition(_SENTINEL)
  # The pipeline puts BOS first when the template does not write it (tokenize_records.with_bos).
  added_bos = tokenizer.bos_id is not None and not template_wrote_bos(tokenizer, tokenizer.encode(head))
  out = []
  for row, mask in zip(prompt_tokens, prompt_mask):
    ids = [int(t) for t, m in zip(row, mask) if m]
    if added_bos and ids and ids[0] == tokenizer.bos_id:
      ids = ids[1:]
    text = tokenizer.decode(ids, skip_special=False)
    if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
      out.append(text[len(head):len(text) - len(tail)].strip())
    else:
      out.append(tokenizer.decode(ids, skip_special=True).strip())
  return out


@functools.partial(jax.jit, static_argnames=('model', 'answer_ids'))
def _harm(model: Any, params: Any, tokens: jax.Array, mask: jax.Array, last: jax.Array,
          temperature: jax.Array, answer_ids: tuple[int, int] | None) -> jax.Array:
  """[N] harm probabilities of right-padded judge inputs; `last` [N] = each row's last token."""
  from deepalign.models.transformer import Transformer
  if answer_ids is None:
    score = model.apply({'params': params}, tokens, mask).astype(jnp.float32)
    return jax.nn.sigmoid(score / temperature)
  final = model.apply({'params': params}, tokens, mask, read=last[:, None],
                      method=Transformer.hidden_states)[:, 0]
  logits = model.apply({'params': params}, final, method=Transformer.logits).astype(jnp.float32)
  pair = logits[:, jnp.asarray(answer_ids)] / temperature  # [N, 2]: unsafe, safe
  return jax.nn.softmax(pair, axis=-1)[:, 0]


@dataclasses.dataclass(frozen=True)
class TextJudge:
  """A judge checkpoint with its own tokenizer (see the module docstring).

  answer_ids: (unsafe, safe) token ids for a causal-LM judge; None for a score-head judge.
  """
  model: Any
  params: Any
  tokenizer: Any
  template: Any  # a ChatTemplate, or None: prompt + blank line + response
  temperature: float
  answer_ids: tuple[int, int] | None
  source: str

  @classmethod
  def load(cls, directory: str, temperature: float, unsafe_word: str, safe_word: str,
           dtype: str, param_dtype: str) -> 'TextJudge':
    """The judge in HF checkpoint `directory` (config.json, weights, tokenizer files)."""
    from deepalign import models
    from deepalign.data import chat_template
    from deepalign.data.tokenizer import load_tokenizer
    model, params = models.from_pretrained(directory, dtype=dtype, param_dtype=param_dtype)
    tokenizer = load_tokenizer(directory)
    template = None
    if chat_template.has_chat_template(directory):
      template = chat_template.ChatTemplate.from_pretrained(directory, tokenizer=tokenizer)
    answer_ids = None
    if model.config.head == 'lm':
      answer_ids = tuple(_first_id(tokenizer, w, directory) for w in (unsafe_word, safe_word))
      if answer_ids[0] == answer_ids[1]:
        raise UserError(f"config.eval.judge='{directory}': the answer words {unsafe_word!r} and "
                        f"{safe_word!r} start with the same token; set config.eval.judge_unsafe_word "
                        'and judge_safe_word to words whose first tokens differ')
    elif model.config.head != 'score' or model.config.num_labels != 1:
      raise UserError(f"config.eval.judge='{directory}' is a {model.config.head!r} model with "
                      f'{model.config.num_labels} labels; a text judge is a causal LM (a guard that '
                      'answers safe/unsafe) or a one-label *ForSequenceClassification checkpoint')
    if model.config.vocab_size < tokenizer.vocab_size:
      raise UserError(f"config.eval.judge='{directory}': its tokenizer has {tokenizer.vocab_size} "
                      f'ids but the model only {model.config.vocab_size}; the directory mixes two '
                      'checkpoints')
    return cls(model, params, tokenizer, template, float(temperature), answer_ids, directory)

  def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """The judge's input text of each (prompt, response) conversation."""
    if self.template is None:
      return [f'{p}\n\n{r}' for p, r in zip(prompts, responses)]
    generation_prompt = self.answer_ids is not None
    return [self.template.render([{'role': 'user', 'content': p},
                                  {'role': 'assistant', 'content': r}],
                                 add_generation_prompt=generation_prompt)
            for p, r in zip(prompts, responses)]

  def encode(self, prompts: Sequence[str], responses: Sequence[str]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded judge tokens [N, L], mask [N, L] and each row's last index [N]."""
    from deepalign.data.tokenize_records import with_bos
    tok = self.tokenizer
    # BOS first unless the judge's template wrote it (Llama-Guard-3's starts ' <|begin_of_text|>').
    rows = [with_bos(tok, tok.encode(text)) for text in self.texts(prompts, responses)]
    longest = max(len(r) for r in rows)
    limit = self.model.config.max_position_embeddings
    if longest > limit:
      raise UserError(f"config.eval.judge='{self.source}' reads at most {limit} tokens, but a "
                      f'conversation is {longest}: lower config.eval.max_new_tokens or use a judge '
                      'with a longer context')
    width = min(limit, -(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET)
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    tokens = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, ids in enumerate(rows):
      tokens[i, :len(ids)], mask[i, :len(ids)] = ids, 1
    return tokens, mask, np.array([len(r) - 1 for r in rows], np.int32)

  def harm(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """[N] float32 harm probabilities in [0, 1]."""
    tokens, mask, last = self.encode(prompts, responses)
    return np.asarray(_harm(self.model, self.params, tokens, mask, last,
                            jnp.float32(self.temperature), self.answer_ids), np.float32)


def _first_id(tokenizer: Any, word: str, directory: str) -> int:
  ids = tokenizer.encode(word)
  if not ids:
    raise UserError(f"config.eval.judge='{directory}': the answer word {word!r} encodes to no "
                    'token; set config.eval.judge_unsafe_word / judge_safe_word')
  return int(ids[0])

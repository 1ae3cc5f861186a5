"""Scores for generated replies: how close a reply is to the agent's real answer, and how varied.

These metrics judge only the text of replies; language-model numbers such as loss or bits per byte
are computed elsewhere. Each catches a different failure, so a report shows all of them:

- **BLEU** (sacrebleu, corpus level, 0-100): n-gram precision with a brevity penalty, the number
  most papers quote. sacrebleu fixes the tokenization, so scores are comparable across runs and
  with published ones. Chinese has no spaces between words, so it is scored with sacrebleu's "zh"
  tokenizer (one token per character); with "13a" a whole clause would be one token.
- **chrF** (sacrebleu, 0-100): F-score over character n-grams. It needs no word boundaries, so it
  is the fairest single number for Chinese and for near-miss wordings in English.
- **ROUGE-L** (0-100): F1 over the longest common subsequence of tokens, averaged per reply.
  It rewards getting the key words in the right order without demanding contiguous n-grams.
- **distinct-n** (0-1): distinct n-grams / all n-grams over the replies. A model that answers
  everything with one canned sentence can score well above and still be useless; this exposes it.

ROUGE-L and distinct-n share one tokenizer, `words`: lower-cased word runs for English, and for
Chinese each CJK character is a token while Latin and digit runs stay whole (order numbers, "App").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sacrebleu

LANGUAGES = ("en", "zh", "auto")

# CJK Unified Ideographs with Extension A, and the compatibility ideographs.
_CJK = "\u3400-\u9fff\uf900-\ufaff"
_HAS_CJK = re.compile(f"[{_CJK}]")
_WORD = re.compile(r"\w+")
# One CJK character, or a run of other word characters (Latin letters, digits, underscore).
_CJK_OR_WORD = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    """Every hypothesis needs exactly one reference; an empty set has no score at all."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"got {len(hypotheses)} hypotheses but {len(references)} references; "
            "pass exactly one reference per generated reply"
        )
    if not hypotheses:
        raise ValueError("got 0 hypotheses and 0 references; pass at least one reply to score")


def _has_cjk(text: str) -> bool:
    return _HAS_CJK.search(text) is not None


def words(text: str, language: str) -> list[str]:
    """Lower-cased tokens for ROUGE-L and distinct-n; "auto" looks at this text alone."""
    if language == "zh" or (language == "auto" and _has_cjk(text)):
        return _CJK_OR_WORD.findall(text.lower())
    return _WORD.findall(text.lower())


def _bleu_tokenizer(references: Sequence[str], language: str) -> str:
    """sacrebleu tokenizer name: "zh" for Chinese; "auto" follows the majority of references."""
    if language == "auto":
        chinese = sum(_has_cjk(reference) for reference in references)
        language = "zh" if chinese > len(references) / 2 else "en"
    return "zh" if language == "zh" else "13a"


def corpus_bleu(hypotheses: list[str], references: list[str], language: str = "en") -> float:
    """sacrebleu corpus BLEU (0-100) with one reference per hypothesis.

    Args:
        language: "en" (13a tokenizer), "zh" (zh tokenizer) or "auto" ("zh" when most references
            contain CJK characters).
    """
    _check_language(language)
    _check_pairs(hypotheses, references)
    bleu = sacrebleu.metrics.BLEU(tokenize=_bleu_tokenizer(references, language))
    return bleu.corpus_score(hypotheses, [references]).score


def corpus_chrf(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu chrF (0-100) with its defaults: chrF2, character order 6, no word n-grams."""
    _check_pairs(hypotheses, references)
    return sacrebleu.metrics.CHRF().corpus_score(hypotheses, [references]).score


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming over two rows."""
    if len(a) < len(b):
        a, b = b, a  # the rows run over the shorter sequence, so memory is O(min(n, m))
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0] * (len(b) + 1)
        for j, other in enumerate(b, start=1):
            if token == other:
                current[j] = previous[j - 1] + 1
            else:
                current[j] = max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def _rouge_l_f1(hypothesis: list[str], reference: list[str]) -> float:
    if not hypothesis or not reference:
        # Saying nothing when nothing was expected is right; any other empty side is a miss.
        return 100.0 if not hypothesis and not reference else 0.0
    lcs = _lcs_length(hypothesis, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hypothesis), lcs / len(reference)
    return 100.0 * 2 * precision * recall / (precision + recall)


def rouge_l(hypotheses: list[str], references: list[str], language: str = "en") -> float:
    """Mean sentence-level ROUGE-L F1 (0-100) over the pairs, on `words` tokens.

    Args:
        language: "en", "zh" or "auto" (decided per text by the presence of CJK characters).
    """
    _check_language(language)
    _check_pairs(hypotheses, references)
    scores = [
        _rouge_l_f1(words(hypothesis, language), words(reference, language))
        for hypothesis, reference in zip(hypotheses, references, strict=True)
    ]
    return sum(scores) / len(scores)


def distinct_n(texts: list[str], n: int, language: str = "en") -> float:
    """Distinct n-grams / total n-grams over all texts (0-1); 0.0 when there are no n-grams.

    N-grams never cross from one text into the next.
    """
    _check_language(language)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    ngrams: list[tuple[str, ...]] = []
    for text in texts:
        tokens = words(text, language)
        ngrams.extend(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def reply_metrics(
    hypotheses: list[str], references: list[str], language: str = "auto"
) -> dict[str, float]:
    """All reply metrics in one dict, rounded for reports; distinct-n is over the hypotheses.

    Returns:
        {"bleu", "chrf", "rouge_l"} rounded to 2 decimals, {"distinct_1", "distinct_2"} to 4,
        and "replies", the number of pairs scored.
    """
    _check_language(language)
    _check_pairs(hypotheses, references)
    return {
        "bleu": round(corpus_bleu(hypotheses, references, language), 2),
        "chrf": round(corpus_chrf(hypotheses, references), 2),
        "rouge_l": round(rouge_l(hypotheses, references, language), 2),
        "distinct_1": round(distinct_n(hypotheses, 1, language), 4),
        "distinct_2": round(distinct_n(hypotheses, 2, language), 4),
        "replies": len(hypotheses),
    }

"""The dedup engine against the reference implementation (rouge-score), brute force."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, tokenize

from dedup.pool import Pool
from dedup.rougel import Vocabulary, exceeds, rouge_l
from dedup.scan import near_duplicate_pairs
from dedup.tokenize import get_tokenizer, rouge_tokens, unicode_tokens

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

WORDS = ["write", "a", "the", "poem", "about", "sea", "list", "of", "three", "given", "text",
         "sentence", "classify", "whether", "is", "positive", "and", "to", "in", "story"]
word_lists = st.lists(st.sampled_from(WORDS), min_size=0, max_size=14)
sentences = word_lists.map(" ".join)


def reference_f(a: str, b: str) -> float:
    return float(SCORER.score(a, b)["rougeL"].fmeasure)


def ours(a: str, b: str) -> float:
    vocabulary = Vocabulary()
    return rouge_l(vocabulary.encode(rouge_tokens(a)), vocabulary.encode(rouge_tokens(b)))


def reference_admit(texts: list[str], pool: list[str], threshold: float,
                    inclusive: bool = False) -> list[bool]:
    """The reference loop: score against everything admitted so far."""
    kept = list(pool)
    decisions = []
    for text in texts:
        scores = [reference_f(text, other) for other in kept]
        bad = any(exceeds(s, threshold, inclusive) for s in scores)
        decisions.append(not bad)
        if not bad:
            kept.append(text)
    return decisions


def load_instructions() -> list[str]:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    texts = []
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        with open(SHARED / name, encoding="utf-8") as handle:
            texts += [json.loads(line)["instruction"] for line in handle if line.strip()]
    return texts


@given(st.text(max_size=80))
def test_tokenizer_equals_rouge_score(text: str) -> None:
    assert rouge_tokens(text) == tokenize.tokenize(text, None)


@given(sentences, sentences)
def test_f_measure_equals_rouge_score_bit_for_bit(a: str, b: str) -> None:
    assert ours(a, b) == reference_f(a, b)
    assert ours(a, b) == ours(b, a)


@given(st.text(max_size=60), st.text(max_size=60))
def test_f_measure_equals_rouge_score_on_any_text(a: str, b: str) -> None:
    assert ours(a, b) == reference_f(a, b)


@pytest.mark.parametrize(
    ("score", "threshold", "inclusive", "rejected"),
    [(0.7, 0.7, False, False), (0.7, 0.7, True, True), (0.7000001, 0.7, False, True),
     (0.69, 0.7, True, False)],
)
def test_threshold_semantics(score: float, threshold: float, inclusive: bool,
                             rejected: bool) -> None:
    assert exceeds(score, threshold, inclusive) is rejected


def test_tie_at_threshold_matches_reference() -> None:
    # F = 0.7 exactly in rouge-score's float arithmetic: 7 of 10 tokens in common.
    a = "a b c d e f g h i j"
    b = "a b c d e f g x y z"
    assert reference_f(a, b) == ours(a, b)
    for inclusive in (False, True):
        pool = Pool(reference_f(a, b), inclusive=inclusive)
        pool.add(a)
        assert pool.check(b).admitted is (not inclusive)


@pytest.mark.parametrize("index", ["exact", "brute"])
def test_decisions_equal_reference_on_paper_instructions(index: str) -> None:
    texts = load_instructions()
    expected = reference_admit(texts, [], 0.7)
    pool = Pool(0.7, index=index)
    assert [d.admitted for d in pool.admit_batch(texts)] == expected


def _families(rng: random.Random, count: int) -> list[str]:
    """Instructions in near-duplicate families: a base and edited copies."""
    vocabulary = [f"w{i}" for i in range(300)] + WORDS * 5
    bases = [" ".join(rng.choices(vocabulary, k=rng.randint(4, 18))) for _ in range(count // 4)]
    out = []
    for _ in range(count):
        words = rng.choice(bases).split()
        for _ in range(rng.randint(0, 4)):
            op = rng.random()
            position = rng.randrange(len(words) + 1)
            if op < 0.4:
                words.insert(position, rng.choice(vocabulary))
            elif op < 0.7 and len(words) > 1:
                del words[min(position, len(words) - 1)]
            else:
                words[min(position, len(words) - 1)] = rng.choice(vocabulary)
        out.append(" ".join(words))
    return out


@pytest.mark.parametrize(("threshold", "inclusive"), [(0.7, False), (0.7, True), (0.5, False)])
def test_decisions_equal_reference_on_near_duplicate_families(threshold: float,
                                                               inclusive: bool) -> None:
    rng = random.Random(7)
    texts = _families(rng, 400)
    seeds = texts[:40]
    expected = reference_admit(texts[40:], seeds, threshold, inclusive)
    pool = Pool(threshold, inclusive=inclusive)
    pool.preload(seeds)
    decisions = pool.admit_batch(texts[40:])
    assert [d.admitted for d in decisions] == expected
    assert 0 < sum(expected) < len(expected)  # the corpus really has duplicates


def test_rejection_names_the_best_match_and_score() -> None:
    pool = Pool()
    pool.preload(["Write a poem about the sea.", "Write a poem about the blue sea."])
    decision = pool.check("Write a poem about the sea!")
    assert not decision.admitted
    assert decision.match == "Write a poem about the sea."
    assert decision.score == reference_f("Write a poem about the sea!", decision.match)


@settings(max_examples=40, deadline=None)
@given(st.lists(sentences, min_size=1, max_size=40), sentences)
def test_top_k_equals_brute_force(pool_texts: list[str], query: str) -> None:
    pool = Pool(1.0, inclusive=False, top_k=10)  # admit everything but exact copies
    pool.preload(pool_texts)
    decision = pool.check(query)
    if not decision.admitted:
        return
    scores = sorted((reference_f(query, t) for t in pool_texts), reverse=True)
    expected = [s for s in scores[:10] if s > 0]
    assert [s for _, s in decision.most_similar] == expected


def test_mean_similarity_equals_brute_force() -> None:
    texts = _families(random.Random(3), 60)
    pool = Pool(1.0, mean_similarity=True)
    pool.preload(texts[:-1])
    decision = pool.check(texts[-1])
    expected = sum(reference_f(texts[-1], t) for t in texts[:-1]) / (len(texts) - 1)
    assert decision.mean_similarity == pytest.approx(expected, rel=1e-12)


def test_prefix_index_survives_rebuilds_and_vocabulary_drift() -> None:
    # > 1000 entries forces several rebuilds of the token order; new words keep arriving.
    rng = random.Random(11)
    texts = _families(rng, 1200) + [f"brand new word{i} appears here" for i in range(50)]
    brute = Pool(0.7, index="brute", top_k=0)
    exact = Pool(0.7, index="exact", top_k=0)
    assert [d.admitted for d in exact.admit_batch(texts)] == [
        d.admitted for d in brute.admit_batch(texts)
    ]


def test_near_duplicate_pairs_equals_brute_force() -> None:
    texts = _families(random.Random(5), 150)
    expected = [(i, j) for j in range(len(texts)) for i in range(j)
                if reference_f(texts[i], texts[j]) > 0.7]
    assert [(i, j) for i, j, _ in near_duplicate_pairs(texts)] == expected
    assert expected


@pytest.mark.parametrize("index", ["lsh64", "lsh128"])
def test_lsh_index_finds_exact_copies_and_never_admits_wrongly_scored(index: str) -> None:
    texts = _families(random.Random(9), 300)
    pool = Pool(0.7, index=index, top_k=0)
    decisions = pool.admit_batch(texts)
    for text, decision in zip(texts, decisions, strict=True):
        if not decision.admitted:  # a rejection is always a real near-duplicate
            assert decision.match is not None
            assert reference_f(text, decision.match) == decision.score > 0.7
    copies = pool.check(pool.texts[0])
    assert not copies.admitted


def test_unicode_tokenizer_catches_non_latin_duplicates() -> None:
    pairs = [
        ("把这句话翻译成英文。", "请把这句话翻译成英文。"),
        ("Переведите этот текст на английский язык.", "Переведите этот текст на английский."),
        ("اكتب قصيدة قصيرة عن البحر", "اكتب قصيدة قصيرة عن البحر الأزرق"),
        ("हिन्दी में एक छोटी कविता लिखें", "हिन्दी में एक कविता लिखें"),
    ]
    for first, second in pairs:
        assert Pool(tokenizer="rouge").admit_batch([first, second])[1].admitted  # missed
        assert not Pool(tokenizer="unicode").admit_batch([first, second])[1].admitted


def test_unicode_tokens_split_cjk_by_character_and_keep_marks() -> None:
    assert unicode_tokens("把这 Hello, Wörld") == ["把", "这", "hello", "wörld"]
    assert unicode_tokens("हिन्दी") == ["हिन्दी"]
    assert get_tokenizer("rouge") is rouge_tokens
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("bpe")


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"top_k": -1},
                                    {"index": "faiss"}])
def test_bad_pool_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Pool(**kwargs)  # type: ignore[arg-type]


# Golden pairs around the threshold: (a, b, rouge-score's F, rejected at 0.7 (>), at >= 0.7)
GOLDEN_NEAR = [
    ("a b c d e f g h i j", "a b c d e f g x y z", 0.7),
    ("write a short poem about the sea", "write a short story about the sea", 0.8571428571428571),
    ("one two three four five six seven", "one two three four five x y", 0.7142857142857143),
    ("alpha beta gamma delta epsilon", "alpha beta gamma zeta eta theta", 0.5454545454545454),
]


@pytest.mark.parametrize(("a", "b", "expected"), GOLDEN_NEAR)
def test_golden_pairs_near_the_threshold(a: str, b: str, expected: float) -> None:
    assert reference_f(a, b) == pytest.approx(expected, abs=1e-15)
    assert ours(a, b) == reference_f(a, b)
    for inclusive in (False, True):
        pool = Pool(0.7, inclusive=inclusive)
        pool.add(a)
        assert pool.check(b).admitted is not exceeds(reference_f(a, b), 0.7, inclusive)


@pytest.mark.parametrize("text", ["", "   ", "!!! ... ???", "—–•", "\n\t"])
def test_empty_and_punctuation_only_strings(text: str) -> None:
    assert rouge_tokens(text) == tokenize.tokenize(text, None) == []
    assert ours(text, "write a poem") == reference_f(text, "write a poem") == 0.0
    pool = Pool()
    pool.preload(["write a poem", text])
    decision = pool.check(text)  # no tokens: F is 0 against everything, as rouge-score says
    assert decision.admitted and decision.score == 0.0


def test_very_long_strings() -> None:
    rng = random.Random(2)
    words = [f"w{i}" for i in range(500)]
    a = " ".join(rng.choices(words, k=3000))
    b_tokens = a.split()
    for i in range(0, len(b_tokens), 7):
        b_tokens[i] = "changed"
    b = " ".join(b_tokens)
    assert ours(a, b) == reference_f(a, b)
    pool = Pool()
    pool.add(a)
    assert pool.check(b).admitted is not (reference_f(a, b) > 0.7)


@pytest.mark.parametrize(
    ("a", "b"),
    [("Напишите короткое стихотворение о море", "Напишите короткое стихотворение о море."),
     ("写一首关于大海的短诗", "写一首关于大海的诗"),
     ("café au lait recipe please", "cafe au lait recipe please")],
)
def test_non_latin_text_with_both_tokenizers(a: str, b: str) -> None:
    # rouge tokenizer: exactly rouge-score's view (non-Latin letters vanish)
    assert ours(a, b) == reference_f(a, b)
    rouge_pool = Pool(tokenizer="rouge")
    rouge_pool.add(a)
    assert rouge_pool.check(b).admitted is not (reference_f(a, b) > 0.7)
    # unicode tokenizer: the words are seen, and these near-copies are caught
    unicode_pool = Pool(tokenizer="unicode")
    unicode_pool.add(a)
    assert not unicode_pool.check(b).admitted


@pytest.mark.parametrize("index", ["exact", "brute"])
def test_early_rejection_decides_as_scoring_every_candidate(index: str) -> None:
    """A rejection stops at the first batch of candidates holding a match; the decision
    must equal the one from every candidate's score, and the reported match must be real."""
    rng = random.Random(21)
    pool = Pool(0.7, index=index, top_k=0)
    texts = _families(rng, 1500)
    pool.preload(texts[:1200])  # large enough that queries meet > 64 candidates
    queries = texts[1200:]
    rejected = 0
    for text in queries:
        decision = pool.check(text)
        every_match = pool.matches(pool.encode(text))
        assert decision.admitted == (not every_match)
        if not decision.admitted:
            rejected += 1
            assert decision.match is not None
            assert reference_f(text, decision.match) == decision.score > 0.7
    assert 0 < rejected < len(queries)


def test_exact_repeats_are_decided_like_new_candidates() -> None:
    """Repeats of entries and of rejected candidates skip the index; decisions must match
    a pool that never saw the earlier copy."""
    rng = random.Random(5)
    texts = _families(rng, 400)
    stream = texts + rng.sample(texts, 200)  # every one of the last 200 is a repeat
    pool = Pool(0.7, top_k=0)
    decisions = pool.admit_batch(stream)
    for text, decision in zip(stream[400:], decisions[400:], strict=True):
        assert not decision.admitted  # a repeat of an entry or of a rejected text
        assert decision.match is not None
        assert reference_f(text, decision.match) == decision.score > 0.7
    fresh = Pool(0.7, top_k=0)
    fresh.preload(pool.texts)
    assert [fresh.check(t).admitted for t in stream[400:]] == [False] * 200
    at_one = Pool(1.0, top_k=0)  # F = 1.0 is not above a threshold of 1.0
    at_one.preload(["Write a poem."])
    assert at_one.check("Write a poem.").admitted

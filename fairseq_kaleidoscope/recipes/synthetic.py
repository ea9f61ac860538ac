"""A synthetic German→English-like parallel corpus with word reordering and agreement.

The task is small enough to learn in minutes on a CPU but not a word-for-word copy:

- German main clauses are verb-second: a fronted adverb moves the verb before the
  subject ("heute sieht der hund die katze" → "today the dog sees the cat");
- subordinate clauses put the verb last ("weil der hund die katze sieht" →
  "because the dog sees the cat");
- determiners agree with the noun's gender, number and case (der/die/das/den/dem …,
  all "the" in English) and adjectives take the matching ending;
- the verb agrees with the subject's number in both languages, but the number is
  visible in German on the determiner and noun, in English on the verb ("-s");
- prepositions govern the dative ("mit dem hund" / "mit der katze");
- beside a few real words, the lexicon has hundreds of invented words (German-like and
  English-like syllables, a fixed seed) drawn with Zipf frequencies, so that rare words
  are seen only a few times in training: a model's BLEU depends on how much of the
  lexicon it learned, and does not saturate at 100 within a short training budget.

Usage: ``python -m fairseq_kaleidoscope.recipes.synthetic OUT_DIR --train 4000``
writes ``{train,valid,test}.{de,en}`` (one sentence per line, tokens separated by spaces).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

# noun: (german singular, german plural, gender, english singular, english plural)
NOUNS = [
    ("hund", "hunde", "m", "dog", "dogs"),
    ("mann", "männer", "m", "man", "men"),
    ("lehrer", "lehrer", "m", "teacher", "teachers"),
    ("vogel", "vögel", "m", "bird", "birds"),
    ("apfel", "äpfel", "m", "apple", "apples"),
    ("tisch", "tische", "m", "table", "tables"),
    ("katze", "katzen", "f", "cat", "cats"),
    ("frau", "frauen", "f", "woman", "women"),
    ("blume", "blumen", "f", "flower", "flowers"),
    ("stadt", "städte", "f", "city", "cities"),
    ("tür", "türen", "f", "door", "doors"),
    ("lampe", "lampen", "f", "lamp", "lamps"),
    ("kind", "kinder", "n", "child", "children"),
    ("buch", "bücher", "n", "book", "books"),
    ("haus", "häuser", "n", "house", "houses"),
    ("pferd", "pferde", "n", "horse", "horses"),
    ("auto", "autos", "n", "car", "cars"),
    ("bild", "bilder", "n", "picture", "pictures"),
]
# verb: (german stem, english base form, english 3rd person singular)
VERBS = [
    ("seh", "see", "sees"),
    ("find", "find", "finds"),
    ("lieb", "love", "loves"),
    ("hol", "fetch", "fetches"),
    ("kauf", "buy", "buys"),
    ("mal", "paint", "paints"),
    ("such", "seek", "seeks"),
    ("zeig", "show", "shows"),
    ("hör", "hear", "hears"),
    ("trag", "carry", "carries"),
]
ADJECTIVES = [
    ("klein", "small"),
    ("groß", "big"),
    ("alt", "old"),
    ("neu", "new"),
    ("rot", "red"),
    ("schön", "beautiful"),
    ("laut", "loud"),
    ("müde", "tired"),
]

# Invented words: (German-like, English-like) syllables, one fixed seed, so the lexicon
# is the same in every corpus (the corpus seed only changes which sentences are drawn).
GENERATED = {"nouns": 320, "verbs": 100, "adjectives": 80}
_DE_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "w", "z"]
_DE_ONSETS += ["br", "fl", "gr", "kr", "schl", "st"]
_DE_VOWELS = ["a", "e", "i", "o", "u", "ä", "ö", "ü", "au", "ei"]
_DE_CODAS = ["", "ch", "ck", "f", "g", "k", "l", "m", "nd", "r", "s", "st", "tz"]
_EN_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "l", "m", "p", "qu", "r", "sh", "sn", "th", "tr", "v", "wh", "y"]
_EN_VOWELS = ["a", "ee", "i", "o", "oo", "u", "ay", "ow", "ea"]
_EN_CODAS = ["", "b", "ck", "d", "g", "m", "n", "p", "sh", "t", "x", "ll"]


def _invented_words(
    rng: random.Random, onsets: list[str], vowels: list[str], codas: list[str], n: int, taken: set[str]
) -> list[str]:
    """``n`` distinct words of one or two syllables, none of them in ``taken`` (which grows)."""
    words = []
    while len(words) < n:
        syllables = [rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.choice((1, 2, 2)))]
        word = "".join(syllables) + rng.choice(codas)
        if len(word) > 2 and word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _extend_lexicon() -> None:
    rng = random.Random(20261203)
    taken_de = {w for entry in NOUNS for w in entry[:2]} | {v[0] for v in VERBS} | {a[0] for a in ADJECTIVES}
    taken_en = {w for entry in NOUNS for w in entry[3:]} | {w for v in VERBS for w in v[1:]}
    taken_en |= {a[1] for a in ADJECTIVES}
    de_nouns = _invented_words(rng, _DE_ONSETS, _DE_VOWELS, _DE_CODAS, GENERATED["nouns"], taken_de)
    en_nouns = _invented_words(rng, _EN_ONSETS, _EN_VOWELS, _EN_CODAS, GENERATED["nouns"], taken_en)
    for de, en in zip(de_nouns, en_nouns, strict=True):
        gender = rng.choice("mfn")
        plural = de + {"m": "e", "f": "en", "n": "er"}[gender]
        NOUNS.append((de, plural, gender, en, en + "s"))
    de_verbs = _invented_words(rng, _DE_ONSETS, _DE_VOWELS, ["ch", "f", "g", "k", "l", "m", "r", "s", "tz"],
                               GENERATED["verbs"], taken_de)
    en_verbs = _invented_words(rng, _EN_ONSETS, _EN_VOWELS, ["b", "d", "g", "m", "n", "p", "t", "ll"],
                               GENERATED["verbs"], taken_en)
    VERBS.extend((de, en, en + "s") for de, en in zip(de_verbs, en_verbs, strict=True))
    de_adjs = _invented_words(rng, _DE_ONSETS, _DE_VOWELS, ["ch", "g", "k", "l", "m", "r", "st"],
                              GENERATED["adjectives"], taken_de)
    en_adjs = _invented_words(rng, _EN_ONSETS, _EN_VOWELS, ["d", "ll", "n", "sh", "t", "x"],
                              GENERATED["adjectives"], taken_en)
    ADJECTIVES.extend(zip(de_adjs, en_adjs, strict=True))


_extend_lexicon()


def _zipf_weights(n: int) -> list[float]:
    return [1.0 / (rank + 1) for rank in range(n)]


_NOUN_WEIGHTS = _zipf_weights(len(NOUNS))
_VERB_WEIGHTS = _zipf_weights(len(VERBS))
_ADJECTIVE_WEIGHTS = _zipf_weights(len(ADJECTIVES))

ADVERBS = [("heute", "today"), ("morgen", "tomorrow"), ("oft", "often"), ("hier", "here"), ("dort", "there")]
CONJUNCTIONS = [("weil", "because"), ("wenn", "when"), ("dass", "that"), ("obwohl", "although")]
PREPOSITIONS = [("mit", "with"), ("neben", "next to"), ("hinter", "behind")]

# Definite articles by case and gender (plural is "pl").
ARTICLES = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
    "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
}


def _adjective_ending(case: str, gender: str) -> str:
    """Weak adjective ending after a definite article."""
    if gender == "pl" or case == "dat" or (case == "acc" and gender == "m"):
        return "en"
    return "e"


def _noun_phrase(rng: random.Random, case: str) -> tuple[list[str], list[str], bool]:
    """(german tokens, english tokens, plural?) of a determiner phrase in ``case``."""
    de_sg, de_pl, gender, en_sg, en_pl = rng.choices(NOUNS, _NOUN_WEIGHTS)[0]
    plural = rng.random() < 0.4
    key = "pl" if plural else gender
    de = [ARTICLES[case][key]]
    en = ["the"]
    if rng.random() < 0.4:
        adj_de, adj_en = rng.choices(ADJECTIVES, _ADJECTIVE_WEIGHTS)[0]
        stem = adj_de[:-1] if adj_de.endswith("e") else adj_de
        de.append(stem + _adjective_ending(case, key))
        en.append(adj_en)
    noun_de = de_pl if plural else de_sg
    if plural and case == "dat" and not noun_de.endswith(("n", "s")):
        noun_de += "n"  # dative plural takes -n
    de.append(noun_de)
    en.append(en_pl if plural else en_sg)
    return de, en, plural


def _verb(rng: random.Random, plural_subject: bool) -> tuple[str, str]:
    stem, base, third = rng.choices(VERBS, _VERB_WEIGHTS)[0]
    if plural_subject:
        return stem + "en", base
    return stem + ("et" if stem.endswith(("d", "t")) else "t"), third


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """One random (german, english) sentence pair."""
    subj_de, subj_en, plural = _noun_phrase(rng, "nom")
    verb_de, verb_en = _verb(rng, plural)
    obj_de, obj_en, _ = _noun_phrase(rng, "acc")
    if rng.random() < 0.3:
        prep_de, prep_en = rng.choice(PREPOSITIONS)
        np_de, np_en, _ = _noun_phrase(rng, "dat")
        obj_de = [*obj_de, prep_de, *np_de]
        obj_en = [*obj_en, *prep_en.split(), *np_en]
    if rng.random() < 0.4:  # fronted adverb: verb-second inversion in German only
        adv_de, adv_en = rng.choice(ADVERBS)
        de = [adv_de, verb_de, *subj_de, *obj_de]
        en = [adv_en, *subj_en, verb_en, *obj_en]
    else:
        de = [*subj_de, verb_de, *obj_de]
        en = [*subj_en, verb_en, *obj_en]
    if rng.random() < 0.35:  # subordinate clause: verb-final in German
        conj_de, conj_en = rng.choice(CONJUNCTIONS)
        s_de, s_en, s_pl = _noun_phrase(rng, "nom")
        v_de, v_en = _verb(rng, s_pl)
        o_de, o_en, _ = _noun_phrase(rng, "acc")
        de += [",", conj_de, *s_de, *o_de, v_de]
        en += [",", conj_en, *s_en, v_en, *o_en]
    return " ".join([*de, "."]), " ".join([*en, "."])


def generate(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [sentence_pair(rng) for _ in range(n)]


def write_corpus(out_dir: str | Path, train: int, valid: int, test: int, seed: int = 1) -> Path:
    """Write ``{train,valid,test}.{de,en}`` with disjoint random seeds per split."""
    if min(train, valid, test) < 1:
        raise ValueError(f"split sizes must be >= 1, got train={train} valid={valid} test={test}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("train", train, 0), ("valid", valid, 1), ("test", test, 2)):
        pairs = generate(n, seed * 1000 + offset)
        for lang, column in (("de", 0), ("en", 1)):
            (out / f"{split}.{lang}").write_text("".join(p[column] + "\n" for p in pairs), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--valid", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    out = write_corpus(args.out_dir, args.train, args.valid, args.test, args.seed)
    print(f"synthetic corpus: {args.train}/{args.valid}/{args.test} pairs in {out}")


if __name__ == "__main__":
    main()

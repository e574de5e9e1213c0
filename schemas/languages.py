"""ISO 639-1 language codes, and English names for the ones prompts need."""
from __future__ import annotations

from typing import Optional

ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
    da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy
    hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li
    ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa
    pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th
    ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)

# English names used in prompts and in the paper's encoder prompts; extend as plans need.
LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "ru": "Russian",
    "zh": "Chinese", "cs": "Czech", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "ja": "Japanese", "ko": "Korean", "ar": "Arabic", "hi": "Hindi", "tr": "Turkish",
    "pl": "Polish", "uk": "Ukrainian", "sv": "Swedish",
}


def unsupported_reason(code: str) -> Optional[str]:
    """Why a plan may not name `code` (None when it may): a language the translator can be asked for
    and its outputs checked needs a prompt name (and the checks' rules for it)."""
    if code not in ISO_639_1:
        return f"{code!r} is not an ISO 639-1 language code"
    if code not in LANGUAGE_NAMES:
        return (f"{code!r} has no prompt name or translation checks here; supported: "
                f"{', '.join(sorted(LANGUAGE_NAMES))}")
    return None

"""Instruction templates for the tabletop episodes, with phrasings kept apart for evaluation.

Each intent has several training phrasings and at least one held-out phrasing. The held-out
split uses only held-out phrasings, so a model evaluated on it must generalise over wording.
"""

from __future__ import annotations

import numpy as np

__all__ = ["INTENTS", "PUSH_DIRECTIONS", "format_instruction"]

# Unit push direction on the table (world x right, y away from the camera).
PUSH_DIRECTIONS: dict[str, tuple[float, float]] = {
    "push_left": (-1.0, 0.0),
    "push_right": (1.0, 0.0),
    "push_forward": (0.0, 1.0),
    "push_back": (0.0, -1.0),
}

INTENTS: tuple[str, ...] = (*PUSH_DIRECTIONS, "lift", "next_to")

# intent -> (training phrasings, held-out phrasings); {target} and {reference} are object names.
_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "push_left": (
        (
            "push the {target} to the left",
            "slide the {target} left",
            "move the {target} to the left",
            "shove the {target} leftwards",
        ),
        ("nudge the {target} over to the left side",),
    ),
    "push_right": (
        (
            "push the {target} to the right",
            "slide the {target} right",
            "move the {target} to the right",
            "shove the {target} rightwards",
        ),
        ("nudge the {target} over to the right side",),
    ),
    "push_forward": (
        (
            "push the {target} away from you",
            "slide the {target} forward",
            "move the {target} toward the back of the table",
            "push the {target} forward",
        ),
        ("nudge the {target} further from the camera",),
    ),
    "push_back": (
        (
            "pull the {target} toward you",
            "slide the {target} back",
            "move the {target} toward the front of the table",
            "bring the {target} closer",
        ),
        ("drag the {target} nearer to the camera",),
    ),
    "lift": (
        (
            "lift the {target}",
            "pick up the {target}",
            "raise the {target} off the table",
            "grab the {target} and lift it",
        ),
        ("take hold of the {target} and hold it up",),
    ),
    "next_to": (
        (
            "put the {target} next to the {reference}",
            "push the {target} beside the {reference}",
            "move the {target} over to the {reference}",
            "slide the {target} toward the {reference}",
        ),
        ("bring the {target} close to the {reference}",),
    ),
}


def format_instruction(
    rng: np.random.Generator,
    intent: str,
    target: str,
    reference: str | None = None,
    heldout: bool = False,
) -> str:
    """Draw one phrasing of an intent and fill in the object names.

    Args:
        rng: Random generator that picks the phrasing.
        intent: One of `INTENTS`.
        target: Name of the object that moves, for example "red cube".
        reference: Name of the object to move next to; required for "next_to".
        heldout: Draw from the held-out phrasings instead of the training phrasings.

    Returns:
        The instruction text.

    Raises:
        ValueError: If `intent` is unknown or "next_to" has no `reference`.
    """
    if intent not in _TEMPLATES:
        raise ValueError(f"intent must be one of {INTENTS}, got {intent!r}")
    if intent == "next_to" and not reference:
        raise ValueError("intent 'next_to' needs a reference object name, got None")

    train, held = _TEMPLATES[intent]
    options = held if heldout else train
    template = options[int(rng.integers(len(options)))]
    return template.format(target=target, reference=reference)

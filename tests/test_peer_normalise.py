"""The number normalisation of the Whisper peer benchmark (benchmarks/peer_whisper.py): Whisper
prints digits and punctuation, our references spell numbers out in upper-case words."""

import pytest

from benchmarks.peer_whisper import normalise_whisper, number_to_words
from asr.text import normalize_text


@pytest.mark.parametrize("n, words", [
    (0, "ZERO"), (2, "TWO"), (13, "THIRTEEN"), (20, "TWENTY"), (25, "TWENTY FIVE"), (99, "NINETY NINE"),
    (100, "ONE HUNDRED"), (215, "TWO HUNDRED FIFTEEN"), (1000, "ONE THOUSAND"),
    (1990, "ONE THOUSAND NINE HUNDRED NINETY"), (2024, "TWO THOUSAND TWENTY FOUR"),
    (100000, "ONE HUNDRED THOUSAND"), (1_000_001, "ONE MILLION ONE"),
    (123_456_789, "ONE HUNDRED TWENTY THREE MILLION FOUR HUNDRED FIFTY SIX THOUSAND SEVEN HUNDRED EIGHTY NINE"),
])
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_number_to_words_is_already_normalised():
    for n in range(0, 3000, 7):
        words = number_to_words(n)
        assert normalize_text(words) == words


def test_number_to_words_rejects_negative():
    with pytest.raises(ValueError):
        number_to_words(-1)


@pytest.mark.parametrize("text, expected", [
    ("Chapter 7, Our Virtues.", "CHAPTER SEVEN OUR VIRTUES"),
    ("It will be different. 215 As in the stellar", "IT WILL BE DIFFERENT TWO HUNDRED FIFTEEN AS IN THE STELLAR"),
    ("Enter 897.", "ENTER EIGHT HUNDRED NINETY SEVEN"),
    ("1 5 1 3 6", "ONE FIVE ONE THREE SIX"),
    ("3-3-1-0-1-8-8.", "THREE THREE ONE ZERO ONE EIGHT EIGHT"),
    ("B-A-T-T-E-R-S-O-N.", "B A T T E R S O N"),
    ("JPEG 4.", "JPEG FOUR"),
    ("It's 1,000 miles.", "IT'S ONE THOUSAND MILES"),
    ("about 3.25 inches", "ABOUT THREE POINT TWO FIVE INCHES"),
    ("the 21st and 2nd, 3rd, 4th, 12th, 20th", "THE TWENTY FIRST AND SECOND THIRD FOURTH TWELFTH TWENTIETH"),
    ("up 50% today", "UP FIFTY PERCENT TODAY"),
    ("$5 or $1", "FIVE DOLLARS OR ONE DOLLAR"),
    ("Tom & Jerry", "TOM AND JERRY"),
    ("at 5:30pm", "AT FIVE THIRTY PM"),
    ("No.", "NO"),
    ("  ", ""),
])
def test_normalise_whisper(text, expected):
    assert normalise_whisper(text) == expected

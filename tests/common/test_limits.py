"""fit_text cuts first and marks after: a cut text always ends with CUT_MARK and still fits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ackbot.common.limits import CUT_MARK, fit_text, utf8_size


def test_a_models_marked_cut_keeps_its_mark_when_the_stores_limit_cuts_again():
    # A 100 KB answer the model cut (marked), then cut to a store's --max-text-bytes 4001.
    answer = "word " * 20_000 + CUT_MARK
    fitted = fit_text(answer, 4001)
    assert fitted.endswith(CUT_MARK)
    assert not fitted.endswith(CUT_MARK * 2)
    assert utf8_size(fitted) <= 4001


def test_a_text_that_fits_is_not_marked():
    assert fit_text("short", 5) == "short"


@given(text=st.text(alphabet=st.characters(codec="utf-8"), min_size=1), limit=st.integers(4, 200))
def test_a_cut_text_fits_and_ends_with_the_mark(text, limit):
    fitted = fit_text(text, limit)
    assert utf8_size(fitted) <= limit
    if fitted != fit_text(text, 10**9):
        assert fitted.endswith(CUT_MARK)

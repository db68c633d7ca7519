"""Floating-point images with no-data pixels (NaN, inf), as GIS and scientific tools write them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medcad.data.pixels import scale_to_uint8


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(np.float32, (12, 12), elements=st.floats(-1e4, 1e4, width=32)),
    holes=arrays(bool, (12, 12)),
    fill=st.sampled_from([np.nan, np.inf, -np.inf]),
)
def test_no_data_pixels_leave_the_others_scaled_as_without_them(values, holes, fill) -> None:
    """The finite pixels come out as they would without the no-data ones (a 10 x 10 NaN block in a BUSI float TIFF
    had made the whole image one grey value); NaN is the lowest value, -inf and +inf the ends."""
    image = np.where(holes, np.float32(fill), values)
    got = scale_to_uint8(image)
    if holes.all():
        assert (got == 0).all()
        return
    finite = values[~holes]
    reference = scale_to_uint8(np.where(holes, finite.min() if fill != np.inf else finite.max(), values))
    assert np.array_equal(got, reference)

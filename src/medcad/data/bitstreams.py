"""What a video packet's bitstream says about the frames it refers to (`Bitstream.read`): whether no frame refers to
it (`Facts.disposable`), whether it is an HEVC leading picture, and whether a frame it may refer to is missing from
the file.

A packet dropped from a file whole (a recorder or capture card that lost it, a remux that skipped it, a transport
stream that lost its PES) leaves no error behind: the decoder conceals the missing reference and the frames after
it come out smeared, with no flag. Codecs number their reference pictures, so a missing one shows as a skip in the
numbering: H.264's frame_num (ITU-T H.264 7.4.3), MPEG-1 / MPEG-2's temporal_reference between anchor pictures
(ISO/IEC 13818-2 6.3.9). A frame the encoder never had (a camera or capture card that dropped it before encoding)
leaves the numbering whole: only the timestamps skip, and nothing refers to a missing frame. HEVC: its picture order
count against the presentation times tells the two apart at a gap in the decode timestamps. Other codecs' numbering
is not read (VP9's and AV1's reference slots, MPEG-4 Part 2): `missing` is None for them, and the timestamps alone
decide (`medcad.data.video`).
"""

from __future__ import annotations

from typing import NamedTuple

INTRA, PREDICTED, BIDIRECTIONAL = 1, 2, 3  # MPEG-1 / MPEG-2 picture_coding_type (I, P, B)
UNSURE = "unsure"  # `Facts.missing`: the next packet tells (`Bitstream.earlier`)
WRAP = 1024  # MPEG-2 temporal_reference counts modulo 1024


class Facts(NamedTuple):
    """What one packet's bitstream says (`Bitstream.read`)."""

    missing: bool | str | None  # a reference picture decoded before it is missing from the file: True, False,
    # UNSURE (packets after it tell), None (cannot be told: another codec, no header found, headers that do not
    # parse, an MPEG-2 room between anchors wider than any seen: the timestamps decide)
    disposable: bool  # no frame refers to it: its loss or damage costs only itself
    leading: bool = False  # an HEVC leading picture (RASL / RADL): no picture shown from its IRAP on refers to it
    irap: bool = False  # an HEVC IRAP picture (the leading pictures after it in decode order are its)


def nal_units(data: bytes, size: int | None) -> list[bytes]:
    """The NAL units of an H.264 / HEVC packet (header first): prefixed by their length in `size` bytes (avcC / hvcC
    streams: MP4, Matroska), or after Annex B start codes 00 00 01 (`size` None: MPEG-TS, raw .h264 / .hevc)."""
    units = []
    if size:
        at = 0
        while at + size < len(data):
            length = int.from_bytes(data[at : at + size], "big")
            units.append(data[at + size : at + size + length])
            at += size + length
        return units
    starts, at = [], 0
    while (at := data.find(b"\x00\x00\x01", at)) >= 0 and at + 3 < len(data):
        starts.append(at + 3)
        at += 3
    for k, s in enumerate(starts):
        units.append(data[s : starts[k + 1] - 3].rstrip(b"\x00") if k + 1 < len(starts) else data[s:])
    return units


def _start_codes(data: bytes, code: int) -> list[int]:
    """Offsets of the start codes 00 00 01 `code` in `data`."""
    found, at = [], 0
    pattern = b"\x00\x00\x01" + bytes([code])
    while (at := data.find(pattern, at)) >= 0:
        found.append(at)
        at += 4
    return found


class _Bits:
    """An RBSP's bits (emulation prevention bytes 00 00 03 removed): u(n), ue(v), se(v) of ITU-T H.264 7.2. Reading
    past the end raises IndexError (the header does not parse)."""

    def __init__(self, nal: bytes) -> None:
        data = nal.replace(b"\x00\x00\x03", b"\x00\x00")
        self.value, self.size, self.at = int.from_bytes(data, "big"), 8 * len(data), 0

    def u(self, n: int) -> int:
        if self.at + n > self.size:
            raise IndexError("read past the end of the header")
        self.at += n
        return (self.value >> (self.size - self.at)) & ((1 << n) - 1)

    def ue(self) -> int:
        left = self.size - self.at
        zeros = left - (self.value & ((1 << left) - 1)).bit_length()  # leading zero bits
        if zeros >= left:
            raise IndexError("read past the end of the header")
        if zeros > 31:
            raise ValueError("exp-Golomb code longer than 32 bits")
        self.at += zeros + 1
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


class _H264Sps:
    """The fields of a sequence parameter set (ITU-T H.264 7.3.2.1.1) that a slice header's frame_num needs."""

    HIGH = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}  # profiles with chroma_format_idc

    def __init__(self, rbsp: bytes) -> None:
        bits = _Bits(rbsp)
        profile = bits.u(8)
        bits.u(16)  # constraint flags, level_idc
        self.id = bits.ue()
        self.separate_colour_plane = False
        if profile in self.HIGH:
            chroma_format_idc = bits.ue()
            if chroma_format_idc == 3:
                self.separate_colour_plane = bool(bits.u(1))
            bits.ue(), bits.ue(), bits.u(1)  # bit depths, qpprime_y_zero_transform_bypass_flag
            if bits.u(1):  # seq_scaling_matrix_present_flag
                for i in range(12 if chroma_format_idc == 3 else 8):
                    if bits.u(1):
                        last = next_ = 8
                        for _ in range(16 if i < 6 else 64):
                            if next_:
                                next_ = (last + bits.se() + 256) % 256
                            last = next_ or last
        self.log2_max_frame_num = bits.ue() + 4
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()
        elif poc_type == 1:
            bits.u(1), bits.se(), bits.se()
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        self.gaps_allowed = bool(bits.u(1))


class _HevcSps(NamedTuple):
    layers: int  # temporal sub-layers
    separate_colour_plane: bool
    log2_max_poc_lsb: int


def _hevc_sps(rbsp: bytes) -> tuple[int, _HevcSps]:
    """(sps_seq_parameter_set_id, the fields a slice header's picture order count needs) of an HEVC sequence
    parameter set (ITU-T H.265 7.3.2.2.1, profile_tier_level 7.3.3)."""
    bits = _Bits(rbsp)
    bits.u(4)  # sps_video_parameter_set_id
    sub_layers = bits.u(3)  # sps_max_sub_layers_minus1
    bits.u(1)
    bits.u(8), bits.u(32), bits.u(48), bits.u(8)  # general profile, compatibility flags, constraints, level
    present = [(bits.u(1), bits.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        bits.u(2 * (8 - sub_layers))
    for profile, level in present:
        bits.u(88 * profile + 8 * level)
    sps_id = bits.ue()
    separate = bits.ue() == 3 and bool(bits.u(1))  # chroma_format_idc, separate_colour_plane_flag
    bits.ue(), bits.ue()  # pic_width_in_luma_samples, pic_height_in_luma_samples
    if bits.u(1):  # conformance_window_flag
        for _ in range(4):
            bits.ue()
    bits.ue(), bits.ue()  # bit depths
    return sps_id, _HevcSps(sub_layers + 1, separate, bits.ue() + 4)


class Bitstream:
    """One video stream's packets read in decode order (`read`, for every packet with data, damaged ones too:
    their headers usually survive): which frames no frame refers to, which reference pictures are missing from the
    file (H.264 frame_num, MPEG-1 / MPEG-2 temporal_reference; HEVC at a timestamp gap, its picture order count),
    HEVC's leading pictures."""

    def __init__(self, codec: str, extradata: bytes | None = None) -> None:
        self.codec = codec
        self._size: int | None = None  # NAL length size (avcC / hvcC); None: Annex B
        self._layers: int | None = None  # HEVC temporal sub-layers (hvcC numTemporalLayers, or its SPS)
        self._hevc_sps: dict[int, _HevcSps] = {}
        self._hevc_pps: dict[int, tuple[int, bool, int]] = {}  # id -> SPS id, output_flag_present_flag,
        # num_extra_slice_header_bits
        self._offsets: list[int] = []  # HEVC: presentation time in frames - picture order count (mod MaxPocLsb)
        self._watch: tuple[int, int, int] | None = None  # HEVC: after a timestamp gap, (offset before it, frames
        # skipped, packets left)
        self._sps: dict[int, _H264Sps] = {}
        self._pps: dict[int, int] = {}  # pic_parameter_set_id -> seq_parameter_set_id
        self._prev_ref: int | None = None  # H.264 PrevRefFrameNum
        self._anchors: list[int] = []  # MPEG-2: temporal_reference of the last two anchor (I, P) pictures
        self._seen: set[int] = set()  # MPEG-2: temporal_reference of the GOP's pictures so far
        self._last: int | None = None  # MPEG-2: the last packet's temporal_reference
        self._b_frames = False  # MPEG-2: B pictures seen (anchors are then not next to each other)
        self._spacing = 1  # MPEG-2: the widest room between two anchors seen with B pictures in it
        self._doubtful: tuple[int, int] | None = None  # MPEG-2: a room wider than that (not learnt from)
        self._pending: tuple[int, int] | None = None  # MPEG-2: an UNSURE P picture's room (last anchor, its number)
        self.earlier: bool | None = None  # the verdict on the last UNSURE packet, told by the one after it
        extradata = bytes(extradata or b"")
        if codec == "h264" and extradata[:1] == b"\x01" and len(extradata) > 6:  # avcC (ISO/IEC 14496-15 5.3.3.1)
            self._size = (extradata[4] & 3) + 1
            self._h264_parameter_sets(_avcc_parameter_sets(extradata))
        elif codec == "hevc" and extradata[:1] == b"\x01" and len(extradata) > 22:  # hvcC (ISO/IEC 14496-15 8.3.3.1)
            self._size, self._layers = (extradata[21] & 3) + 1, ((extradata[21] >> 3) & 7) or None  # 0: unknown
            self._hevc_parameter_sets(_hvcc_parameter_sets(extradata))
        elif codec == "hevc":
            self._hevc_parameter_sets(nal_units(extradata, None))

    def read(self, data: bytes | memoryview, position: int | None = None, skipped: int = 0) -> Facts:
        """What the packet `data` says (`Facts`); sets `earlier` where the last UNSURE packet is told about.
        `position`: its presentation time in frames; `skipped`: frames' time the decode timestamps skip before it
        (HEVC: told apart from frames never recorded by the picture order count, `_hevc_order`)."""
        self.earlier = None
        if self.codec not in ("h264", "hevc", "mpeg2video", "mpeg1video", "mpeg4"):
            return Facts(None, False)
        data = bytes(data)
        if self.codec == "h264":
            return self._h264(nal_units(data, self._size))
        if self.codec == "hevc":
            return self._hevc(nal_units(data, self._size), position, skipped)
        if self.codec in ("mpeg2video", "mpeg1video"):
            pictures = [
                ((data[i + 5] >> 3) & 7, (data[i + 4] << 2) | (data[i + 5] >> 6))
                for i in _start_codes(data, 0x00)
                if i + 5 < len(data)
            ]
            disposable = bool(pictures) and all(kind == BIDIRECTIONAL for kind, _ in pictures)
            gop_header = b"\x00\x00\x01\xb8" in data
            return Facts(self._mpeg2(pictures, gop_header) if pictures else None, disposable)
        # mpeg4: MPEG-4 Part 2 B-VOPs (ISO/IEC 14496-2 6.3.5, vop_coding_type 2)
        types = [data[i + 4] >> 6 for i in _start_codes(data, 0xB6) if i + 4 < len(data)]
        return Facts(None, bool(types) and all(t == 2 for t in types))

    def _h264_parameter_sets(self, units: list[bytes]) -> None:
        for unit in units:
            kind = unit[0] & 0x1F if unit else 0
            try:
                if kind == 7:
                    sps = _H264Sps(unit[1:])
                    self._sps[sps.id] = sps
                elif kind == 8:
                    bits = _Bits(unit[1:])
                    pps_id = bits.ue()
                    self._pps[pps_id] = bits.ue()
            except (IndexError, ValueError):
                continue

    def _h264(self, units: list[bytes]) -> Facts:
        """Disposable: every slice has nal_ref_idc 0 (ITU-T H.264 7.4.1). Missing (7.4.3): without
        gaps_in_frame_num_value_allowed_flag, a picture's frame_num is PrevRefFrameNum (a second field, or pictures
        after a non-reference one) or PrevRefFrameNum + 1 modulo MaxFrameNum; any other value means reference
        pictures are missing. An IDR picture starts again at 0. (A memory_management_control_operation 5 also
        resets frame_num; it is not read: such a stream is taken to have lost a frame there.)"""
        self._h264_parameter_sets([u for u in units if u and u[0] & 0x1F in (7, 8)])
        slices = [u for u in units if u and u[0] & 0x1F in (1, 5)]
        if not slices or any(u[0] & 0x80 for u in units if u):  # forbidden_zero_bit set: not a header to trust
            return Facts(None, False)
        disposable = all(u[0] & 0x60 == 0 for u in slices)
        first = slices[0]
        try:
            bits = _Bits(first[1:64])  # the slice header's first fields: a few bytes
            bits.ue(), bits.ue()  # first_mb_in_slice, slice_type
            sps = self._sps.get(self._pps.get(bits.ue(), -1))
            if sps is None:
                return Facts(None, disposable)
            if sps.separate_colour_plane:
                bits.u(2)
            frame_num = bits.u(sps.log2_max_frame_num)
        except (IndexError, ValueError):
            return Facts(None, disposable)
        idr, prev, gap = first[0] & 0x1F == 5, self._prev_ref, False
        if not idr and prev is not None and not sps.gaps_allowed:
            gap = frame_num not in (prev, (prev + 1) % (1 << sps.log2_max_frame_num))
        if idr:
            self._prev_ref = 0
        elif first[0] & 0x60 or gap:
            self._prev_ref = frame_num
        return Facts(gap, disposable)

    def _hevc_parameter_sets(self, units: list[bytes]) -> None:
        for unit in units:
            kind = (unit[0] >> 1) & 0x3F if len(unit) > 2 else -1
            try:
                if kind == 33:
                    sps_id, sps = _hevc_sps(unit[2:])
                    self._hevc_sps[sps_id] = sps
                    self._layers = sps.layers if self._layers is None else self._layers
                elif kind == 34:
                    bits = _Bits(unit[2:])
                    pps_id, sps_id = bits.ue(), bits.ue()
                    bits.u(1)  # dependent_slice_segments_enabled_flag
                    self._hevc_pps[pps_id] = (sps_id, bool(bits.u(1)), bits.u(3))
            except (IndexError, ValueError):
                continue

    def _hevc(self, units: list[bytes], position: int | None, skipped: int) -> Facts:
        """ITU-T H.265 7.4.2.2: a picture whose slices are all sub-layer non-reference (TRAIL_N, TSA_N, STSA_N,
        RADL_N, RASL_N: even types below 16) is referred to by no picture of a stream with one temporal sub-layer;
        RASL / RADL pictures (types 6-9) lead their IRAP picture (types 16-23). Missing: `_hevc_order`."""
        units = [u for u in units if len(u) > 1 and not u[0] & 0x81 and not u[1] & 0xF8]  # nuh_layer_id 0 (the base)
        self._hevc_parameter_sets([u for u in units if len(u) > 2 and (u[0] >> 1) & 0x3F in (33, 34)])
        kinds = [(u[0] >> 1) & 0x3F for u in units]
        slices = [k for k in kinds if k < 32]
        if not slices:
            return Facts(None, False)
        disposable = self._layers == 1 and all(k < 16 and k % 2 == 0 for k in slices)
        leading, irap = all(6 <= k <= 9 for k in slices), all(16 <= k <= 23 for k in slices)
        return Facts(self._hevc_order(units, position, skipped), disposable, leading, irap)

    WATCH = 16  # packets after a timestamp gap within which a frame shown after it has been decoded

    def _hevc_order(self, units: list[bytes], position: int | None, skipped: int) -> bool | str | None:
        """Encoders count pictures in order (slice_pic_order_cnt_lsb, ITU-T H.265 7.3.6.1): n frames the encoder
        never had shift the presentation times against the count by n from where they are missing on; a frame lost
        from the file shifts nothing. At a gap of n frames' time in the decode timestamps, the frames decoded in the
        `WATCH` packets before it (frames shown after the gap may be decoded before it) and after it tell: shifted
        by n, none is missing (False); not, a picture is (True; UNSURE until the packets after it are read, an IDR
        picture ending the wait). None: no count to read, or counts that do not follow the times one by one (an
        encoder counting by two): the timestamps alone decide."""
        found = self._hevc_offset(units, position)
        offset, modulus, idr = found if found is not None else (None, 1, False)
        if self._watch is not None:
            before, need, left = self._watch
            if offset is not None and not idr and (offset - before) % modulus == need:
                self.earlier, self._watch = False, None
            elif left <= 1 or skipped or idr:  # no shift seen (or another gap, a new count): a picture is missing
                self.earlier, self._watch = True, None
            else:
                self._watch = (before, need, left - 1)
        if offset is None:
            return None
        recent = self._offsets
        self._offsets = [*recent[-self.WATCH + 1 :], offset]
        if not skipped:
            return False
        self._offsets = [offset]  # a shift before this gap explains this gap only
        values = list(dict.fromkeys(recent))  # in order of appearance
        if idr or not values or len(values) > 2:
            return None
        if len(values) == 2:  # a shift just before the gap: by n, and this frame after it, frames never recorded
            return False if (values[1] - values[0]) % modulus == skipped and offset == values[1] else None
        if (offset - values[0]) % modulus == skipped:
            return False
        if offset != values[0]:
            return None
        self._watch = (offset, skipped, self.WATCH)
        return UNSURE

    def _hevc_offset(self, units: list[bytes], position: int | None) -> tuple[int, int, bool] | None:
        """(`position` - the first slice's picture order count LSB modulo MaxPocLsb, MaxPocLsb, an IDR picture:
        a new count from 0), or None where there is no count to read."""
        first = next((u for u in units if len(u) > 2 and (u[0] >> 1) & 0x3F < 32 and u[2] & 0x80), None)
        if first is None or position is None:
            return None
        kind = (first[0] >> 1) & 0x3F
        try:
            bits = _Bits(first[2:64])
            bits.u(1 + (16 <= kind <= 23))  # first_slice_segment_in_pic_flag, no_output_of_prior_pics_flag
            pps = self._hevc_pps.get(bits.ue())
            sps = self._hevc_sps.get(pps[0]) if pps else None
            if sps is None:
                return None
            bits.u(pps[2])  # slice_reserved_flag
            bits.ue()  # slice_type
            bits.u(pps[1] + 2 * sps.separate_colour_plane)  # pic_output_flag, colour_plane_id
            poc = 0 if kind in (19, 20) else bits.u(sps.log2_max_poc_lsb)  # IDR: 0
        except (IndexError, ValueError):
            return None
        if kind in (19, 20):
            self._offsets = []
        modulus = 1 << sps.log2_max_poc_lsb
        return (position - poc) % modulus, modulus, kind in (19, 20)

    def _mpeg2(self, pictures: list[tuple[int, int]], gop_header: bool) -> bool | str:
        """ISO/IEC 13818-2 6.3.9: temporal_reference numbers a GOP's pictures in display order, each once (modulo
        1024). A B picture lies between the last two anchor (I, P) pictures decoded (an open GOP's first B
        pictures after the anchor of the GOP before); a P picture follows the last anchor. A number seen before in
        the GOP means a GOP header (and its I picture) is missing; a B picture out of place, an anchor. A P picture
        that leaves room before it, in a stream with no B pictures yet, is `UNSURE`: B pictures next fill the room,
        or an anchor is missing; where B pictures were seen, a room wider than any seen with B pictures in it cannot
        be told (None: an anchor and its B pictures missing, or more B pictures than before). A missing B picture
        leaves the others in place: no picture refers to it."""
        kind, tr = pictures[0]
        if not gop_header and tr == self._last:  # a field picture's second field, in a packet of its own
            return False
        self._last = tr
        if self._anchors and tr > self._anchors[-1] + WRAP // 2:  # shown before an anchor whose number wrapped
            tr -= WRAP
        if self._pending is not None:  # the pictures after an UNSURE P picture fill the room it left, or not
            low, high = self._pending
            self.earlier, self._pending = not (kind == BIDIRECTIONAL and low < tr < high), None
        low, high = [-2, -2, *self._anchors][-2:]
        filled = any(t in self._seen for t in range(low + 1, high))  # B pictures in the room between the anchors
        if kind in (INTRA, PREDICTED) and filled and (low, high) != self._doubtful:
            self._spacing = max(self._spacing, high - low)
        if gop_header:  # temporal_reference starts again
            self._anchors, self._seen = [-1], set()  # -1: the GOP before's last anchor, shown before this GOP's 0
        elif self._anchors and tr < self._anchors[-1] - WRAP // 2:  # the numbering wrapped (no GOP header since)
            self._anchors, self._seen = [a - WRAP for a in self._anchors], set()
        anchors, gap = self._anchors, tr in self._seen
        self._seen.add(tr)
        if kind == BIDIRECTIONAL:
            self._b_frames = True
            return gap or bool(anchors) and (tr > anchors[-1] or len(anchors) == 2 and tr < anchors[0])
        if kind not in (INTRA, PREDICTED):
            return gap
        self._anchors = [*anchors[-1:], tr]
        if kind == INTRA or not anchors or gap or tr <= anchors[-1]:
            return gap or (kind == PREDICTED and bool(anchors) and tr <= anchors[-1])
        room = tr - anchors[-1]
        if room > 1 and not self._b_frames:
            self._pending = (anchors[-1], tr)
            return UNSURE
        if room > self._spacing and self._b_frames:
            self._doubtful = (anchors[-1], tr)
            return None
        return False


def _hvcc_parameter_sets(extradata: bytes) -> list[bytes]:
    """The NAL units of an hvcC record's arrays (ISO/IEC 14496-15 8.3.3.1: VPS, SPS, PPS, SEI)."""
    units, at = [], 23
    for _ in range(extradata[22]):
        count, at = int.from_bytes(extradata[at + 1 : at + 3], "big"), at + 3
        for _ in range(count):
            if at + 2 > len(extradata):  # a record cut short
                return units
            length = int.from_bytes(extradata[at : at + 2], "big")
            units.append(extradata[at + 2 : at + 2 + length])
            at += 2 + length
    return units


def _avcc_parameter_sets(extradata: bytes) -> list[bytes]:
    """The SPS and PPS NAL units of an avcC record (ISO/IEC 14496-15 5.3.3.1)."""
    units, at = [], 6
    count = extradata[5] & 0x1F
    for table in range(2):
        for _ in range(count):
            length = int.from_bytes(extradata[at : at + 2], "big")
            units.append(extradata[at + 2 : at + 2 + length])
            at += 2 + length
        if table == 1 or at >= len(extradata):
            break
        count, at = extradata[at], at + 1
    return units

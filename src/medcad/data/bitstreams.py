"""What a video packet's bitstream says about the frames it refers to: whether no frame refers to it
(`disposable`), and whether a frame it may refer to is missing from the file (`Continuity`).

A packet dropped from a file whole (a recorder or capture card that lost it, a remux that skipped it, a transport
stream that lost its PES) leaves no error behind: the decoder conceals the missing reference and the frames after
it come out smeared, with no flag. Codecs number their reference pictures, so a missing one shows as a skip in the
numbering: H.264's frame_num (ITU-T H.264 7.4.3), MPEG-1 / MPEG-2's temporal_reference between anchor pictures
(ISO/IEC 13818-2 6.3.9). A frame the encoder never had (a camera or capture card that dropped it before encoding)
leaves the numbering whole: only the timestamps skip, and nothing refers to a missing frame.
"""

from __future__ import annotations

INTRA, PREDICTED, BIDIRECTIONAL = 1, 2, 3  # MPEG-1 / MPEG-2 picture_coding_type (I, P, B)
UNSURE = "unsure"  # `Continuity.missing_before`: the next packet tells (`Continuity.earlier`)


def disposable(codec: str, data: bytes | memoryview, extradata: bytes | None = None) -> bool:
    """Whether no other frame refers to the frame coded in `data` (a packet of `codec`, FFmpeg's name), as its
    bitstream says: an H.264 access unit whose slices all have nal_ref_idc 0 (ITU-T H.264 7.4.1: not used for
    inter prediction), an HEVC picture of a stream with one temporal sub-layer whose slices are all sub-layer
    non-reference (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N; ITU-T H.265 7.4.2.2), an MPEG-2 B picture (ISO/IEC
    13818-2 6.3.9, picture_coding_type 3) or an MPEG-4 Part 2 B-VOP (ISO/IEC 14496-2 6.3.5, vop_coding_type 2), never
    references. The loss of such a frame costs only itself. False where it cannot be told (other codecs; no slice or
    picture header found; headers that do not parse; HEVC with temporal sub-layers or no parameter sets in
    `extradata`). `extradata`: the stream's (H.264 / HEVC in MP4 / Matroska: avcC / hvcC, giving the NAL length
    size; else Annex B)."""
    if codec not in ("h264", "hevc", "mpeg2video", "mpeg1video", "mpeg4"):
        return False
    view = memoryview(data).cast("B")
    if codec == "hevc":
        return _hevc_unreferenced(view, extradata)
    if codec == "h264":
        units = h264_nal_units(view, extradata)
        slices = [u[0] for u in units if u and u[0] & 0x1F in (1, 5)]
        if not slices or any(u[0] & 0x80 for u in units if u):  # forbidden_zero_bit set: not a header to trust
            return False
        return all(h & 0x60 == 0 for h in slices)
    if codec in ("mpeg2video", "mpeg1video"):
        types = [t for t, _ in _mpeg2_pictures(bytes(view))]
        return bool(types) and all(t == BIDIRECTIONAL for t in types)
    types = [view[i + 4] >> 6 for i in _start_codes(bytes(view), 0xB6) if i + 4 < len(view)]
    return bool(types) and all(t == 2 for t in types)


def _start_codes(data: bytes, code: int) -> list[int]:
    """Offsets of the start codes 00 00 01 `code` in `data`."""
    found, at = [], 0
    pattern = b"\x00\x00\x01" + bytes([code])
    while (at := data.find(pattern, at)) >= 0:
        found.append(at)
        at += 4
    return found


def _mpeg2_pictures(data: bytes) -> list[tuple[int, int]]:
    """(picture_coding_type, temporal_reference) of each picture header (00 00 01 00) in an MPEG-1 / MPEG-2 packet."""
    return [
        ((data[i + 5] >> 3) & 7, (data[i + 4] << 2) | (data[i + 5] >> 6))
        for i in _start_codes(data, 0x00)
        if i + 5 < len(data)
    ]


def hevc_leading(data: bytes | memoryview, extradata: bytes | None) -> bool:
    """Whether an HEVC packet is a leading picture (RADL or RASL: NAL unit types 6-9, ITU-T H.265 7.4.2.2):
    shown before the IRAP picture it follows in decode order, and no picture shown from that IRAP on refers to it."""
    size_at = 21 if extradata and extradata[0] == 1 and len(extradata) > 22 else 4
    units = h264_nal_units(memoryview(data).cast("B"), extradata if size_at == 21 else None, size_at=size_at)
    kinds = [(u[0] >> 1) & 0x3F for u in units if len(u) > 1 and not u[0] & 0x80]
    slices = [k for k in kinds if k < 32]
    return bool(slices) and all(6 <= k <= 9 for k in slices)


def _hevc_unreferenced(view: memoryview, extradata: bytes | None) -> bool:
    """All VCL NAL units (types 0-31) of an HEVC access unit are sub-layer non-reference (even types below 16), in
    a stream of one temporal sub-layer (hvcC numTemporalLayers, or the SPS's sps_max_sub_layers_minus1 0): no
    picture refers to them."""
    if not extradata:
        return False
    if extradata[0] == 1 and len(extradata) > 22:  # hvcC (ISO/IEC 14496-15 8.3.3.1)
        layers, units = (extradata[21] >> 3) & 7, h264_nal_units(view, extradata, size_at=21)
    else:
        sps = next((u for u in h264_nal_units(extradata, None) if len(u) > 2 and (u[0] >> 1) & 0x3F == 33), None)
        layers, units = (None if sps is None else ((sps[2] >> 1) & 7) + 1), h264_nal_units(view, None)
    if layers != 1:
        return False
    kinds = [(u[0] >> 1) & 0x3F for u in units if len(u) > 1 and not u[0] & 0x80]
    slices = [k for k in kinds if k < 32]
    return bool(slices) and all(k < 16 and k % 2 == 0 for k in slices)


def h264_nal_units(view: memoryview | bytes, extradata: bytes | None, size_at: int = 4) -> list[bytes]:
    """The NAL units of an H.264 (or HEVC: `size_at` 21) packet (header first): length-prefixed where `extradata` is
    an avcC (hvcC) record (MP4, Matroska), else after Annex B start codes 00 00 01 (MPEG-TS, raw .h264 / .hevc)."""
    data = bytes(view)
    units = []
    if extradata and extradata[0] == 1 and len(extradata) > size_at:  # avcC / hvcC: NAL units prefixed by length
        size, at = (extradata[size_at] & 3) + 1, 0
        while at + size < len(data):
            length = int.from_bytes(data[at : at + size], "big")
            units.append(data[at + size : at + size + length])
            at += size + length
        return units
    starts = []
    at = 0
    while (at := data.find(b"\x00\x00\x01", at)) >= 0 and at + 3 < len(data):
        starts.append(at + 3)
        at += 3
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else len(data)
        units.append(data[s:end].rstrip(b"\x00") if k + 1 < len(starts) else data[s:end])
    return units


class _Bits:
    """An RBSP's bits (emulation prevention bytes 00 00 03 removed): u(n), ue(v), se(v) of ITU-T H.264 7.2."""

    def __init__(self, nal: bytes) -> None:
        self.data = nal.replace(b"\x00\x00\x03", b"\x00\x00")
        self.at = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.at >> 3]  # IndexError past the end: the header does not parse
            value = (value << 1) | ((byte >> (7 - (self.at & 7))) & 1)
            self.at += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code longer than 32 bits")
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
            if bits.ue() == 3:  # chroma_format_idc
                self.separate_colour_plane = bool(bits.u(1))
            bits.ue(), bits.ue(), bits.u(1)  # bit depths, qpprime_y_zero_transform_bypass_flag
            if bits.u(1):  # seq_scaling_matrix_present_flag
                for i in range(12 if self.separate_colour_plane or profile == 244 else 8):
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


class Continuity:
    """Per video stream, packet by packet in decode order: whether a frame a packet's frame may refer to is missing
    from the file (`missing_before`), read from the reference numbering of H.264 and MPEG-1 / MPEG-2 bitstreams.
    Other codecs: not known (None)."""

    def __init__(self, codec: str, extradata: bytes | None = None) -> None:
        self.codec = codec
        self.extradata = extradata
        self._sps: dict[int, _H264Sps] = {}
        self._pps: dict[int, int] = {}  # pic_parameter_set_id -> seq_parameter_set_id
        self._prev_ref: int | None = None  # H.264 PrevRefFrameNum
        self._anchors: list[int] = []  # MPEG-2: temporal_reference of the last two anchor (I, P) pictures
        self._seen: set[int] = set()  # MPEG-2: temporal_reference of the GOP's pictures so far
        self._last: int | None = None  # MPEG-2: the last packet's temporal_reference
        self._b_frames = False  # MPEG-2: B pictures seen (anchors are then not consecutive)
        self._adjacent = False  # MPEG-2: an anchor seen right after the one before it (no B pictures between)
        self._anchor_last = False  # MPEG-2: the last packet was an anchor picture
        self._pending: tuple[int, int] | None = None  # MPEG-2: an UNSURE P picture's room (last anchor, its number)
        self.earlier: bool | None = None  # the verdict on the last UNSURE packet, told by the one after it
        if codec == "h264" and extradata and extradata[0] == 1 and len(extradata) > 6:
            self._h264_parameter_sets(_avcc_parameter_sets(extradata))

    def missing_before(self, data: bytes | memoryview) -> bool | str | None:
        """Whether a reference picture decoded before this packet's is missing from the file (True), none is
        (False), the next packet tells (`UNSURE`: then `earlier` holds the verdict, True or False, after the next
        call), or it cannot be told (None: another codec, no picture header in the packet, headers that do not
        parse). Call for every packet with data, in file order (damaged ones too: their headers usually survive)."""
        self.earlier = None
        try:
            if self.codec == "h264":
                return self._h264(data)
            if self.codec in ("mpeg2video", "mpeg1video"):
                return self._mpeg2(bytes(data))
        except (IndexError, ValueError):
            return None
        return None

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

    def _h264(self, data: bytes | memoryview) -> bool | None:
        """ITU-T H.264 7.4.3: without gaps_in_frame_num_value_allowed_flag, a picture's frame_num is
        PrevRefFrameNum (a second field, or pictures after a non-reference one) or PrevRefFrameNum + 1 modulo
        MaxFrameNum; any other value means reference pictures are missing. An IDR picture starts again at 0.
        (A memory_management_control_operation 5 also resets frame_num; it is not read: such a stream would be
        taken to have lost a frame there.)"""
        units = h264_nal_units(memoryview(data).cast("B"), self.extradata)
        self._h264_parameter_sets([u for u in units if u and u[0] & 0x1F in (7, 8)])
        first = next((u for u in units if u and u[0] & 0x1F in (1, 5)), None)
        if first is None:
            return None
        ref, idr = first[0] & 0x60, first[0] & 0x1F == 5
        bits = _Bits(first[1:64])  # the slice header's first fields: a few bytes
        bits.ue(), bits.ue()  # first_mb_in_slice, slice_type
        sps = self._sps.get(self._pps.get(bits.ue(), -1))
        if sps is None:
            return None
        if sps.separate_colour_plane:
            bits.u(2)
        frame_num = bits.u(sps.log2_max_frame_num)
        prev, gap = self._prev_ref, False
        if not idr and prev is not None and not sps.gaps_allowed:
            gap = frame_num not in (prev, (prev + 1) % (1 << sps.log2_max_frame_num))
        if idr:
            self._prev_ref = 0
        elif ref or gap:
            self._prev_ref = frame_num
        return gap

    def _mpeg2(self, data: bytes) -> bool | None:
        """ISO/IEC 13818-2 6.3.9: temporal_reference numbers a GOP's pictures in display order, each once. A B
        picture lies between the last two anchor (I, P) pictures decoded (an open GOP's first B pictures after the
        anchor of the GOP before); a P picture follows the last anchor (next to it where the stream has no B
        pictures, once two have been seen next to each other; until then or the first B picture, a P picture that
        leaves room before it is `UNSURE`: B pictures next fill the room, or an anchor is missing). A number seen
        before in the GOP means a GOP header (and its I picture) is missing; a picture out of place, an anchor. (A
        missing B picture leaves the others in place: no picture refers to it. A GOP longer than 1,024 pictures,
        whose numbering wraps, is not read.)"""
        pictures = _mpeg2_pictures(data)
        if not pictures:
            return None
        kind, tr = pictures[0]
        if self._pending is not None:  # B pictures shown before the UNSURE P picture fill the room it left, or not
            low, high = self._pending
            self.earlier, self._pending = not (kind == BIDIRECTIONAL and low < tr < high), None
        if _start_codes(data, 0xB8):  # group_of_pictures header: temporal_reference starts again
            self._anchors, self._seen = [-1], set()  # -1: the GOP before's last anchor, shown before this GOP's 0
        elif tr == self._last:  # a field picture's second field, in a packet of its own
            return False
        self._last = tr
        anchors, gap = self._anchors, tr in self._seen
        self._seen.add(tr)
        if kind == BIDIRECTIONAL:
            self._b_frames = True
            gap = gap or bool(anchors) and (tr > anchors[-1] or len(anchors) == 2 and tr < anchors[0])
        elif kind in (INTRA, PREDICTED):
            skips = False
            if kind == PREDICTED and anchors:
                self._adjacent |= self._anchor_last and tr == anchors[-1] + 1
                skips = tr > anchors[-1] + 1  # room for B pictures after it, or an anchor missing before it
                gap = gap or tr <= anchors[-1] or (skips and self._adjacent and not self._b_frames)
            self._anchors = [*anchors[-1:], tr]
            self._anchor_last = True
            if skips and not gap and not self._adjacent and not self._b_frames:
                self._pending = (anchors[-1], tr)  # the stream's structure not known yet: the next picture tells
                return UNSURE
        self._anchor_last = kind in (INTRA, PREDICTED)
        return gap


def _avcc_parameter_sets(extradata: bytes) -> list[bytes]:
    """The SPS and PPS NAL units of an avcC record (ISO/IEC 14496-15 5.3.3.1)."""
    units, at = [], 6
    count = extradata[5] & 0x1F
    for table in range(2):
        for _ in range(count):
            length = int.from_bytes(extradata[at : at + 2], "big")
            units.append(extradata[at + 2 : at + 2 + length])
            at += 2 + length
        if table == 0 and at < len(extradata):
            count, at = extradata[at], at + 1
    return units

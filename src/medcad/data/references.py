"""Which decoded video frames were decoded from a lost or damaged one.

An inter codec (H.264, HEVC, MPEG-2, MPEG-4, VP9, AV1) codes most frames as differences from frames decoded before
them. When a frame is lost (its packet does not decode) or damaged (the demuxer or the decoder flags it), decoders
carry on with what they have and conceal it: the frames decoded after it, up to the next key frame, come out
smeared, with no error, flag or log line (an H.264 clip with one P frame lost: the 19 frames up to the key frame
came out 47-54 of 255 grey levels off the recorded pictures). `ReferenceChain` tells them apart, by decode order:

- decode order is the order of the packets in the file; a frame is known by its presentation timestamp (pts);
- a frame decoded *before* the damage is clean, even when it is shown after it (a P frame whose B frames are lost);
- a frame decoded after the damage is clean again only once a key frame decoded intra (an IDR or IRAP picture; an
  MPEG-2 / MPEG-4 / VP9 / AV1 I frame; every frame of an intra-only codec) has been decoded after the damage and is
  shown no later than the frame: a frame shown before its key frame but decoded after it (an open GOP's leading B
  frames) may refer to frames before the key frame. A recovery point without an intra picture (x264's intra
  refresh) is not counted: which parts of the picture it refreshed is not known here;
- a frame can be judged once every packet decoded before it has come out or been declared lost (`settled_before`):
  a B frame shown before the P frame it refers to waits for that P frame. A frame declared lost because frames shown
  after it came out first may still come out late (an MPEG-2 decoder that lost an I frame gives the B frames before
  it at once and the frame before them one anchor later): the declaration holds only once `CONFIRM` packets decoded
  after it have gone to the decoder, or the timeline has ended.

The start of a timeline counts as damage until its first key frame (a recording started between key frames refers
to frames that are not in the file). A lost or damaged frame that no frame refers to, as its bitstream says
(`medcad.data.bitstreams.Facts.disposable`: an H.264 frame with nal_ref_idc 0, an HEVC sub-layer non-reference
picture, an MPEG-2 or MPEG-4 B frame), costs only itself; which frames the others refer to is not read (VP9, AV1:
every frame counts as referenced): such a loss
costs the frames after it up to the key frame, named, and no frame decoded from a lost one is passed on as clean.
A frame missing from the file altogether (no packet: `missing`) is damage before the packet after it.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict, deque

START = -1  # decode index of the damage a timeline starts with, until its first key frame
MISSING = -2  # frame index of a damage that is a reference frame missing from the file (its bitstream says so)
GAP = -3  # frame index of a damage that is a gap in the decode timestamps (a codec whose references are not read)
CONFIRM = 32  # packets after a frame's own by which it has come out: 16 reordered (H.264, HEVC) + 16 frame threads


class ReferenceChain:
    """One timeline's frames in decode order, and the damage and key frames among them.

    Call `packet` for every packet in file order (discarded ones too: they are decoded as references), `settle` when
    a packet's frame comes out, `lose` when it is declared lost (the frames `overdue` once a later one came out, those
    still `awaited` when the timeline ends; `withdraw` if one comes out after all), `damaged` / `recovered` as frames
    turn out damaged / key frames decoded intra, `finish` when the timeline has ended, and `source` to judge a frame
    once `settled_before` its decode index.
    """

    def __init__(self) -> None:
        self._count = 0
        self._unsettled: dict[int, deque[int]] = defaultdict(deque)  # pts -> decode indices whose frame is awaited
        self._waiting: list[int] = []  # heap of those decode indices
        self._shown: list[int] = []  # heap of those timestamps (frames come out in timestamp order)
        self._unreferenced: set[int] = set()  # decode indices of frames no other frame refers to
        self._settled: set[int] = set()  # settled but still in the heap (removed lazily)
        self._damage: list[tuple[int, int | None]] = [(START, None)]  # (decode index, frame index), sorted
        self._recoveries: list[tuple[int, int | None]] = []  # (decode index, pts) of key frames decoded intra, sorted
        self._declared: set[int] = set()  # decode indices declared lost, not yet confirmed (`CONFIRM`)
        self._unsure: int | None = None  # decode index of a packet that may follow a missing frame (`decide`)
        self._leading: dict[int, int] = {}  # decode index of a leading picture -> its key frame's pts

    def packet(
        self,
        pts: int | None,
        key: bool = False,
        shown: bool = True,
        referenced: bool = True,
        unsure: bool = False,
        leading: int | None = None,
    ) -> int:
        """A packet in file order: its decode index. `shown`: its frame will come out (not a packet the demuxer
        marks to decode as a reference only; a key frame among those is where the frames after it recover);
        `referenced` False: no frame refers to it (`Facts.disposable`), so its loss or damage costs only itself;
        `unsure`: whether a frame is missing before it is told later (`decide`): no frame from it on is judged
        until then; `leading`: the pts of the key frame it is a leading picture of (HEVC RASL / RADL: no frame
        shown from that key frame on refers to it), so its loss or damage costs only frames shown before that."""
        d, self._count = self._count, self._count + 1
        if leading is not None:
            self._leading[d] = leading
        if unsure:
            self._unsure = d
        if shown and pts is not None:
            self._unsettled[pts].append(d)
            heapq.heappush(self._waiting, d)
            heapq.heappush(self._shown, pts)
            if not referenced:
                self._unreferenced.add(d)
        elif key:
            self.recovered(d, pts)
        for k in [k for k in self._declared if k + CONFIRM <= d]:
            self._declared.discard(k)
            self._done(k)
        return d

    def settle(self, pts: int | None) -> int | None:
        """The frame of `pts` came out: its packet's decode index (None: no packet had it)."""
        if self._shown and self._shown[0] == pts:
            heapq.heappop(self._shown)
        d = self._take(pts)
        if d is not None:
            self._done(d)
        return d

    def overdue(self, pts: int | None) -> list[int]:
        """The timestamps of the awaited frames shown before `pts`, which just came out: decoders give frames in
        timestamp order, so these are to be declared lost (`lose`)."""
        gone = []
        while self._shown and pts is not None and self._shown[0] < pts:
            gone.append(heapq.heappop(self._shown))
        return gone

    def awaited(self) -> list[int]:
        """The timestamps of every frame still awaited, in order (at the timeline's end: to be declared lost)."""
        gone, self._shown = sorted(self._shown), []
        return gone

    def lose(self, pts: int, frame: int) -> int | None:
        """The frame of `pts` (video frame `frame`), from `overdue` or `awaited`, is declared lost: its decode index.
        Frames decoded after it wait until `CONFIRM` more packets have gone to the decoder (or `finish`), in case it
        comes out late."""
        d = self._take(pts)
        if d is None:
            return None
        if d in self._unreferenced:
            self._done(d)
            return d
        self.damaged(d, frame)
        if d + CONFIRM <= self._count - 1:
            self._done(d)
        else:
            self._declared.add(d)
        return d

    def withdraw(self, d: int | None) -> None:
        """The frame of decode index `d`, declared lost, came out after all."""
        if d is None:
            return
        self._damage = [e for e in self._damage if e[0] != d]
        if d in self._declared:
            self._declared.discard(d)
            self._done(d)

    def decide(self, missing: bool, frame: int) -> None:
        """Whether a frame (`MISSING`) is missing before the `unsure` packet, as the packets after it told."""
        if self._unsure is not None and missing:
            self._damage_at(self._unsure - 0.5, frame)
        self._unsure = None

    def finish(self) -> None:
        """The timeline has ended: every frame declared lost is lost; an `unsure` packet nothing told about is taken
        to follow a missing frame (the safe side: the frames from it on are named)."""
        self.decide(True, MISSING)
        for d in self._declared:
            self._done(d)
        self._declared.clear()

    def _take(self, pts: int | None) -> int | None:
        """The decode index of the first packet of `pts` whose frame is awaited, no longer awaited."""
        pending = self._unsettled.get(pts) if pts is not None else None
        if not pending:
            return None
        d = pending.popleft()
        if not pending:
            del self._unsettled[pts]
        return d

    def _done(self, d: int) -> None:
        self._settled.add(d)
        while self._waiting and self._waiting[0] in self._settled:
            self._settled.discard(heapq.heappop(self._waiting))

    def settled_before(self, d: int | None) -> bool:
        """Whether every packet decoded before decode index `d` has come out or been declared lost (None: a frame
        with no known packet, judged against what came before it)."""
        if self._unsure is not None and (d is None or d >= self._unsure):
            return False
        return d is None or not self._waiting or self._waiting[0] > d

    @property
    def decoded(self) -> int:
        """Packets seen so far (the decode index a frame with no known packet is judged at)."""
        return self._count

    def damaged(self, d: int | None, frame: int | None) -> None:
        """The frame of decode index `d` (video frame `frame`) is lost or damaged; None: not known which packet. A
        frame no other frame refers to costs only itself."""
        if d in self._unreferenced:
            return
        self._damage_at(self._count if d is None else d, frame)

    def missing(self, frame: int) -> None:
        """A frame decoded before the next packet is missing from the file (`MISSING`: its bitstream's reference
        numbering skips one; `GAP`: the decode timestamps do): the frames from that packet on are decoded from it."""
        self._damage_at(self._count - 0.5, frame)

    def _damage_at(self, at: float, frame: int | None) -> None:
        """Damage at decode position `at` (a missing frame's: between two packets, x.5), kept in decode order."""
        bisect.insort(self._damage, (at, frame), key=lambda e: e[0])

    def recovered(self, d: int | None, pts: int | None) -> None:
        """The frame of decode index `d` is a key frame decoded intra and clean."""
        bisect.insort(self._recoveries, (self._count if d is None else d, pts), key=lambda e: e[0])

    def source(self, d: int | None, pts: int | None) -> tuple[int, int | None] | None:
        """The damage the frame of decode index `d` (None: not known; judged as the latest), shown at `pts`, was
        decoded from: (its decode index, the lost or damaged frame's index; `START`, None for the timeline's start,
        before its first key frame), or None when the frame is clean."""
        at = self._count if d is None else d
        i = bisect.bisect_left(self._damage, at, key=lambda e: e[0])
        while i > 0 and pts is not None and self._leading.get(self._damage[i - 1][0], pts + 1) <= pts:
            i -= 1  # a leading picture's damage: not referred to by frames shown from its key frame on
        if i == 0:
            return None
        k = self._damage[i - 1][0]
        j = bisect.bisect_right(self._recoveries, k, key=lambda e: e[0])
        for r, shown in self._recoveries[j:]:
            if r > at:
                break
            if pts is None or shown is None or shown <= pts:
                return None
        return self._damage[i - 1]

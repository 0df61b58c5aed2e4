"""Video inference: segment a query video clip by clip with reliable memory (docs/protocol.md, "Testing").

The authors' loop re-runs the backbone on the supports and on every memory frame for each
5-frame clip. `VideoSegmenter` computes each frame's backbone features once: the supports
are encoded once per video, and a query frame that turns out reliable (predicted score >=
threshold) is encoded as a memory frame from the features it already has.

Videos stream: `VideoSegmenter.start` encodes the supports and returns a `VideoSession` (the
model's state of one video: supports, memory pool), whose `step` segments one clip at a time,
so a video of any length never has to be in memory. `VideoSegmenter.segment` runs a session
over a whole video tensor; `step_many` steps several videos in one batched forward;
`step_classes` steps several sessions of one video (e.g. one per object class) on one backbone
pass over the clip; `segment_shared` segments several query videos cut from one video's frames
(test.py: a video tested for several classes) with one backbone pass per clip they share. The
authors' protocol, re-encoding everything every clip, is kept as a reference in
benchmarks/recompute.py.
"""
from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from einops import rearrange

from config import DEFAULTS

from .errors import ModelError
from .vipmt import VIPMT, SupportEncoding

CLIP_LENGTH = DEFAULTS.clip_length            # the engine's defaults are config/config.py's
MEMORY_THRESHOLD = DEFAULTS.memory_threshold
MEMORY_SIZE = DEFAULTS.memory_size
MEMORY_POOL_ALL = 0      # memory_pool_size meaning "every reliable frame stays a candidate" (the authors')


@dataclass
class VideoPrediction:
    pred: torch.Tensor      # [T,H,W] int64, 1 = object
    score: torch.Tensor     # [T] predicted IoU of each frame


@dataclass
class ClipResult:
    pred: torch.Tensor      # [t,H,W] int64 on the CPU, 1 = object
    score: torch.Tensor     # [t] float32 on the CPU, predicted IoU of each frame
    probability: torch.Tensor | None = None   # [t,H,W] float32 on the CPU, softmax foreground probability
                                              # of the logits `pred` is the argmax of (step(..., probabilities=True))


def draw_memory(candidates: list, memory_size: int, generator: torch.Generator | None) -> list:
    """All candidates if they fit, else `memory_size` of them at random, in their order.

    The one memory draw of training episodes (`models.episode.plan_episode`) and inference.
    One `randperm(len(candidates))` from `generator` when there are too many, nothing otherwise.
    """
    if len(candidates) <= memory_size:
        return list(candidates)
    picked = torch.randperm(len(candidates), generator=generator)[:memory_size].sort().values
    return [candidates[i] for i in picked.tolist()]


@dataclass
class MemoryFrame:
    """A reliable frame's encoding as kept between clips, with the layer4 tokens of its object
    positions only: `support_similarity` never reads the others, so they come back as zeros.

    Per frame at feature size h x w (C = 384): features C*h*w + object tokens n_object*C +
    object mask h*w + prototype C values (float32 at 240x424: 2.4 MB + 2.4 MB x object fraction).
    """
    object: torch.Tensor          # [1,1,1,h,w]
    prototypes: torch.Tensor      # [1,1,C,1,1]
    features: torch.Tensor        # [1,1,C,h,w]
    object_tokens: torch.Tensor   # [n_object, c] tokens where object > 0, in position order

    @staticmethod
    def pack(encoding: SupportEncoding) -> "MemoryFrame":
        """One frame's SupportEncoding (Ts = 1) -> MemoryFrame."""
        inside = rearrange(encoding.object, "1 1 1 h w -> (h w)") > 0
        return MemoryFrame(object=encoding.object, prototypes=encoding.prototypes, features=encoding.features,
                           object_tokens=encoding.tokens[0, 0, inside])

    def unpack(self) -> SupportEncoding:
        inside = rearrange(self.object, "1 1 1 h w -> (h w)") > 0
        tokens = self.object_tokens.new_zeros(inside.shape[0], self.object_tokens.shape[-1])
        tokens[inside] = self.object_tokens
        return SupportEncoding(object=self.object, prototypes=self.prototypes, features=self.features,
                               tokens=tokens[None, None], shots=0)


def check_video(frames: torch.Tensor, support_img: torch.Tensor, support_mask: torch.Tensor) -> None:
    """One clear ModelError for a video tensor or supports of the wrong shape."""
    if frames.dim() != 4 or support_img.dim() != 4 or support_mask.dim() != 4:
        raise ModelError(f"expected frames [T,3,H,W], support_img [S,3,H,W], support_mask [S,1,H,W]; got "
                         f"{list(frames.shape)}, {list(support_img.shape)}, {list(support_mask.shape)}")
    if len(frames) == 0:
        raise ModelError("the query video has no frames")


def check_clip(clip_frames: torch.Tensor, clip_length: int) -> None:
    """One clear ModelError for a clip that is not [t,3,H,W] with 1 <= t <= clip_length."""
    if clip_frames.dim() != 4 or not 1 <= len(clip_frames) <= clip_length:
        raise ModelError(f"a clip must be [t,3,H,W] with 1 <= t <= {clip_length}, got {list(clip_frames.shape)}")


@dataclass
class QueryVideo:
    """One video for `VideoSegmenter.segment_many`: frames [T,3,H,W], support_img [S,3,H,W] (normalised),
    support_mask [S,1,H,W] 0/1, the generator of its memory draws and a tag handed back with its result."""
    frames: torch.Tensor
    support_img: torch.Tensor
    support_mask: torch.Tensor
    generator: torch.Generator | None = None
    tag: Any = None
    frame_ids: Sequence[Hashable] | None = None   # one id per frame (e.g. its file name): lets
                                                  # `segment_shared` find the clips videos share


def clip_keys(frame_ids: Sequence[Hashable] | None, frames: int, clip_length: int, unshared: Hashable = None) -> list:
    """The key of each clip of a video cut from its first frame into clips of `clip_length` (as
    `VideoSegmenter.segment` cuts it): the tuple of its frames' ids. Without ids (None) every clip's
    key is (`unshared`, clip start), which no other video's clip has when `unshared` is its own."""
    starts = range(0, frames, clip_length)
    if frame_ids is None:
        return [(unshared, start) for start in starts]
    if len(frame_ids) != frames:
        raise ModelError(f"{len(frame_ids)} frame ids for a video of {frames} frames")
    return [tuple(frame_ids[start:start + clip_length]) for start in starts]


def support_layout(support: SupportEncoding) -> tuple:
    """What must agree for encodings to stack in the batch dimension: frames per field and the
    non-tensor fields (e.g. how many frames are annotated supports)."""
    return tuple((f.name, value.shape[1]) if isinstance(value, torch.Tensor) else (f.name, value)
                 for f in fields(SupportEncoding) for value in [getattr(support, f.name)])


def stack_supports(parts: list[SupportEncoding]) -> SupportEncoding:
    """Encodings of the same layout (`support_layout`), each of batch 1, stacked: [1,Ts,...] x B -> [B,Ts,...]."""
    first = parts[0]
    return SupportEncoding(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                              if isinstance(getattr(first, f.name), torch.Tensor) else getattr(first, f.name)
                              for f in fields(SupportEncoding)})


class _RunningVideo:
    """A video inside `segment_many`: its session and the clips segmented so far."""

    def __init__(self, video: QueryVideo, session: "VideoSession"):
        self.video, self.session = video, session
        self.preds: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.position = 0

    def next_clip(self, clip_length: int) -> torch.Tensor:
        return self.video.frames[self.position:self.position + clip_length]

    def add(self, result: ClipResult) -> None:
        self.preds.append(result.pred)
        self.scores.append(result.score)
        self.position += len(result.pred)

    @property
    def done(self) -> bool:
        return self.position >= len(self.video.frames)

    def prediction(self) -> VideoPrediction:
        return VideoPrediction(pred=torch.cat(self.preds), score=torch.cat(self.scores))


class VideoSegmenter:
    """Segments videos with a trained VIPMT, reusing every frame's backbone features.

    Args:
        model: a VIPMT (switched to eval mode here).
        clip_length: query frames per forward pass.
        memory_threshold: a frame whose predicted score is >= this becomes a memory candidate.
        memory_size: at most this many memory frames per clip (drawn at random, kept in order).
        use_memory: False segments every clip against the supports only.
        autocast_dtype: e.g. torch.bfloat16 for mixed precision on CUDA (None = float32).
        memory_pool_size: 0 (the authors') draws memory from every reliable frame so far, so a
            session keeps one `MemoryFrame` per reliable frame; N > 0 keeps and draws from the N
            most recent reliable frames only (bounded memory on long videos; identical results
            as long as a video has at most N reliable frames before its last clip).
    """

    def __init__(self, model: VIPMT, clip_length: int = CLIP_LENGTH, memory_threshold: float = MEMORY_THRESHOLD,
                 memory_size: int = MEMORY_SIZE, use_memory: bool = True,
                 autocast_dtype: torch.dtype | None = None, memory_pool_size: int = MEMORY_POOL_ALL):
        self.model = model.eval()
        self.clip_length = clip_length
        self.memory_threshold = memory_threshold
        self.memory_size = memory_size
        self.use_memory = use_memory
        self.autocast_dtype = autocast_dtype
        self.memory_pool_size = memory_pool_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self):
        """The context every forward of this segmenter runs in (mixed precision, or nothing)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _features(self, images: torch.Tensor) -> dict:
        """images [T,3,H,W] -> backbone features {'k': [1,T,...]}."""
        return self.model.extract_features(images.to(self.device)[None])

    @torch.inference_mode()
    def encode_supports(self, support_img: torch.Tensor, support_mask: torch.Tensor) -> SupportEncoding:
        """support_img [S,3,H,W] (normalised), support_mask [S,1,H,W] 0/1 -> their encoding (B = 1)."""
        if support_img.dim() != 4 or support_mask.dim() != 4 or len(support_img) != len(support_mask):
            raise ModelError(f"expected support_img [S,3,H,W] and support_mask [S,1,H,W]; got "
                             f"{list(support_img.shape)} and {list(support_mask.shape)}")
        with self.autocast():
            return self.model.encode_support(self._features(support_img), support_mask.to(self.device)[None])

    def start(self, support_img: torch.Tensor, support_mask: torch.Tensor,
              generator: torch.Generator | None = None) -> "VideoSession":
        """Encode the supports of a video: support_img [S,3,H,W] (normalised), support_mask
        [S,1,H,W] 0/1 -> a session that segments the video's clips in order. `generator` draws
        memory frames when there are too many."""
        return VideoSession(self, self.encode_supports(support_img, support_mask), generator)

    def segment(self, frames: torch.Tensor, support_img: torch.Tensor, support_mask: torch.Tensor,
                generator: torch.Generator | None = None, progress=None) -> VideoPrediction:
        """frames [T,3,H,W], support_img [S,3,H,W], support_mask [S,1,H,W] (normalised images,
        0/1 masks) -> VideoPrediction. `generator` draws memory frames when there are too many;
        `progress` (optional) is called with the number of frames finished after each clip."""
        check_video(frames, support_img, support_mask)
        session = self.start(support_img, support_mask, generator)
        preds, scores = [], []
        for start in range(0, len(frames), self.clip_length):
            clip = session.step(frames[start:start + self.clip_length])
            preds.append(clip.pred)
            scores.append(clip.score)
            if progress is not None:
                progress(min(start + self.clip_length, len(frames)))
        return VideoPrediction(pred=torch.cat(preds), score=torch.cat(scores))

    @torch.inference_mode()
    def step_many(self, sessions: "list[VideoSession]", clips: "list[torch.Tensor]") -> list[ClipResult]:
        """The next clip of several videos at once: clips[i] [t_i,3,H,W] is the next clip of sessions[i].

        Clips that agree in length and in their supports' layout (number of support + memory frames)
        run as one forward pass, stacked in the batch dimension; each keeps its own supports, memory
        draw (its session's generator) and reliable frames. Why the results are those of
        `VideoSession.step` one video at a time: every step of `VIPMT.predict_clip` acts on each
        sample on its own (convolutions, projections, attention, norms and the prior and PFE mask
        are per sample; the cross-video maps, which mix samples, only feed the training loss), the
        memory draws come from each video's own generator in the same order, and nothing is padded.
        What can differ is floating-point rounding: a CPU (oneDNN) or GPU convolution or matrix
        product may pick another blocking for a larger batch and round a frame's features
        differently in the last bits (measured on CPU: 1x1 convolutions at >= 20 frames, logits
        within 4e-6, scores within 6e-8; docs/speed.md, "test.py on several processes, several videos per pass").
        """
        if len(sessions) != len(clips):
            raise ModelError(f"step_many: {len(sessions)} sessions but {len(clips)} clips")
        for clip_frames in clips:
            check_clip(clip_frames, self.clip_length)
        results: list[ClipResult | None] = [None] * len(sessions)
        with self.autocast():
            supports = [session.next_support() for session in sessions]
            groups: dict = {}
            for index, (clip_frames, support) in enumerate(zip(clips, supports)):
                groups.setdefault((len(clip_frames), support_layout(support)), []).append(index)
            for members in groups.values():
                features = self.model.extract_features(torch.stack([clips[i] for i in members]).to(self.device))
                clip = self.model.predict_clip(features, stack_supports([supports[i] for i in members]))
                for row, index in enumerate(members):
                    part = slice(row, row + 1)
                    results[index] = sessions[index].finish_clip(
                        {k: v[part] for k, v in features.items()}, clip.pred[part], clip.score[part],
                        clip.query_tokens[part])
        return results

    @torch.inference_mode()
    def step_classes(self, sessions: "list[VideoSession]", clip_frames: torch.Tensor,
                     probabilities: bool = False) -> list[ClipResult]:
        """The next clip of one video for several sessions (e.g. one per object class, each with its
        own supports, memory and generator): clip_frames [t,3,H,W] normalised, 1 <= t <= clip_length
        -> one ClipResult per session, in order.

        The backbone encodes the clip once; each session's forward then reads that same feature
        tensor, one session at a time (batch 1, nothing stacked), so each result is exactly the
        one `sessions[i].step(clip_frames)` gives: `VideoSession.step` is this method with one
        session. probabilities: also return each pixel's foreground probability, the float32
        softmax (outside autocast) of the logits `pred` is the argmax of.
        """
        check_clip(clip_frames, self.clip_length)
        results, logits = [], []
        with self.autocast():
            features = self._features(clip_frames)
            for session in sessions:
                clip = self.model.predict_clip(features, session.next_support())
                results.append(session.finish_clip(features, clip.pred, clip.score, clip.query_tokens))
                logits.append(clip.full_logits if probabilities else None)
        for result, full_logits in zip(results, logits):
            if full_logits is not None:
                result.probability = full_logits[0].float().softmax(dim=1)[:, 1].cpu()
        return results

    def segment_shared(self, videos: Sequence["QueryVideo"]) -> list[VideoPrediction]:
        """Several query videos cut from the frames of one video (e.g. one video tested for several
        classes, each on the frames where its class is present), each with its own supports and
        generator, and `frame_ids` naming its frames -> one VideoPrediction per video, in order,
        each bit-identical to `segment` of that video alone with its own generator.

        Each video is cut into clips from its first frame, as `segment` cuts it. A clip that several
        videos hold (the same frame ids, `clip_keys`, and the same pixels, `torch.equal`: e.g. a
        letterbox that differs makes them two clips) goes through the backbone once for all of them
        (`step_classes`: each video's forward on its own, batch 1, on that one feature tensor).
        Each video steps through its clips in order; a clip runs once every video holding it has
        reached it, so when frame ids follow one order in all videos (frame numbers, or names of
        one sorted list) every clip held by several videos is encoded once. Videos without
        `frame_ids` share nothing.
        """
        for video in videos:
            check_video(video.frames, video.support_img, video.support_mask)
        sessions = [self.start(v.support_img, v.support_mask, v.generator) for v in videos]
        keys = [clip_keys(v.frame_ids, len(v.frames), self.clip_length, unshared=("video", i))
                for i, v in enumerate(videos)]
        position = [0] * len(videos)          # each video's next clip
        preds: list[list[torch.Tensor]] = [[] for _ in videos]
        scores: list[list[torch.Tensor]] = [[] for _ in videos]
        while True:
            waiting = [i for i in range(len(videos)) if position[i] < len(keys[i])]
            if not waiting:
                break
            later = {key for i in waiting for key in keys[i][position[i] + 1:]}
            # the first next clip that no video holds further on; none (ids in no common order): the first
            key = next((keys[i][position[i]] for i in waiting if keys[i][position[i]] not in later),
                       keys[waiting[0]][position[waiting[0]]])
            holders = [i for i in waiting if keys[i][position[i]] == key]
            start = {i: position[i] * self.clip_length for i in holders}
            clips = {i: videos[i].frames[start[i]:start[i] + self.clip_length] for i in holders}
            for same in self._same_pixels(holders, clips):
                for i, result in zip(same, self.step_classes([sessions[i] for i in same], clips[same[0]])):
                    preds[i].append(result.pred)
                    scores[i].append(result.score)
            for i in holders:
                position[i] += 1
        return [VideoPrediction(pred=torch.cat(p), score=torch.cat(s)) for p, s in zip(preds, scores)]

    @staticmethod
    def _same_pixels(members: list, clips: dict) -> list[list]:
        """`members` split into groups whose clips (clips[member]) are equal tensors (shape and values)."""
        groups: list[tuple[torch.Tensor, list]] = []
        for member in members:
            clip = clips[member]
            group = next((g for first, g in groups if first.shape == clip.shape and torch.equal(first, clip)), None)
            if group is None:
                groups.append((clip, [member]))
            else:
                group.append(member)
        return [g for _, g in groups]

    def segment_many(self, videos: Iterable["QueryVideo"], video_batch: int) -> Iterator[tuple[Any, VideoPrediction]]:
        """Segment videos `video_batch` at a time, side by side (`step_many`); yields (video.tag,
        VideoPrediction) as each video finishes, which need not be in the order given.

        A finished video's place is taken by the next one at once, so videos of different
        lengths keep the batch full. Each video's result equals `segment` on it alone with its own
        generator (see `step_many` for the floating-point caveat). Videos are read from `videos`
        only when a place is free, so a DataLoader can stream them.
        """
        if video_batch < 1:
            raise ModelError(f"video_batch must be >= 1, got {video_batch}")
        pending = iter(videos)
        running: list[_RunningVideo] = []
        while True:
            while len(running) < video_batch:
                video = next(pending, None)
                if video is None:
                    break
                check_video(video.frames, video.support_img, video.support_mask)
                running.append(_RunningVideo(video, self.start(video.support_img, video.support_mask, video.generator)))
            if not running:
                return
            clips = [r.next_clip(self.clip_length) for r in running]
            for r, result in zip(running, self.step_many([r.session for r in running], clips)):
                r.add(result)
            for r in [r for r in running if r.done]:
                running.remove(r)
                yield r.video.tag, r.prediction()


class VideoSession:
    """The model's state of one video being segmented clip by clip (from `VideoSegmenter.start`).

    Holds the supports' encoding (`supports`: a caller may replace it between steps, e.g. to add
    an annotated correction), the memory pool (one `MemoryFrame` per reliable frame, or the
    `memory_pool_size` most recent ones) and the previous clip's reliable frames' backbone
    features until the next clip (the last clip's frames are never encoded: no clip reads
    them). Nothing else of the video is kept: the frames are the caller's.

    A clip is `step` (the whole of it), or its two halves for a caller that runs the model
    itself on several sessions at once (`VideoSegmenter.step_many`, `VideoSegmenter.step_classes`):
    `next_support()`, the model's forward against it, then `finish_clip(...)`, once per clip, in
    this order.
    """

    def __init__(self, segmenter: VideoSegmenter, supports: SupportEncoding, generator: torch.Generator | None):
        self.segmenter = segmenter
        self.supports = supports
        self.generator = generator
        self.memory_pool: list[MemoryFrame] = []
        self._reliable = None       # (backbone features, predicted masks, tokens) of the last clip's reliable frames

    def step(self, clip_frames: torch.Tensor, probabilities: bool = False) -> ClipResult:
        """The next clip of the video: clip_frames [t,3,H,W] normalised, 1 <= t <= clip_length.
        probabilities: also return each pixel's foreground probability (ClipResult.probability)."""
        return self.segmenter.step_classes([self], clip_frames, probabilities)[0]

    @torch.inference_mode()
    def next_support(self) -> SupportEncoding:
        """This clip's supports plus its memory draw (from this session's generator), after the
        previous clip's reliable frames join the pool (a later clip exists now)."""
        segmenter = self.segmenter
        with segmenter.autocast():
            self._encode_reliable()
        memory = draw_memory(self.memory_pool, segmenter.memory_size, self.generator) if segmenter.use_memory else []
        return SupportEncoding.cat([self.supports, *(m.unpack() for m in memory)]) if memory else self.supports

    @torch.inference_mode()
    def finish_clip(self, features: dict, pred: torch.Tensor, score: torch.Tensor,
                    query_tokens: torch.Tensor) -> ClipResult:
        """Keep the clip's reliable frames for the next clip. features {'k': [1,t,...]}, pred
        [1,t,H,W], score [1,t], query_tokens [1,t,hw,c] (the forward against `next_support()`'s
        encoding) -> ClipResult."""
        segmenter = self.segmenter
        if segmenter.use_memory:
            keep = (score[0] >= segmenter.memory_threshold).nonzero().flatten().tolist()
            if keep:
                self._reliable = ({k: v[:, keep] for k, v in features.items()}, pred[:, keep, None],
                                  query_tokens[:, keep])
        return ClipResult(pred=pred[0].cpu(), score=score[0].float().cpu())

    def _encode_reliable(self) -> None:
        """Encode the previous clip's reliable frames into the pool."""
        if self._reliable is None:
            return
        features, masks, tokens = self._reliable
        self._reliable = None
        encoded = self.segmenter.model.encode_support(features, masks, tokens=tokens, shots=0)
        self.memory_pool.extend(MemoryFrame.pack(encoded.select([i])) for i in range(masks.shape[1]))
        if self.segmenter.memory_pool_size > 0:
            del self.memory_pool[:-self.segmenter.memory_pool_size]

"""Typed facts about one Docker host: the snapshot every pure layer works from.

A snapshot is read-only data (no client, no connection). It round-trips through JSON so that
pure layers (analysis, plan, criteria) are tested from recorded case files without Docker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NONE_TAG = "<none>:<none>"
NONE_DIGEST = "<none>@<none>"

# Where an image's arrival time on its engine came from, most exact first (ImageFact.arrival_source).
ARRIVAL_SOURCES = ("imagedb", "last_tag_time", "events", "ledger")


def is_dangling(repo_tags: list[str], repo_digests: list[str]) -> bool:
    """Return whether an image with these references is dangling: no tag AND no repository digest.

    The one definition every layer uses (analysis, plan, criteria, report, the cleanup module's copy).
    An image pulled by digest (``docker pull repo@sha256:...``) has no tag but is named by its digest:
    it is deployed that way, it is not junk. The engine's ``dangling=true`` filter lists such images
    (measured on 20.10, SANDBOX-NOTES.md), so that filter is never relied on. ``<none>`` placeholders
    (20.10 lists ``<none>:<none>`` and ``<none>@<none>``) are not names.
    """
    tags = [t for t in repo_tags if t and t != NONE_TAG]
    digests = [d for d in repo_digests if d and d != NONE_DIGEST]
    return not tags and not digests


def short_digest_ref(ref: str) -> str:
    """Return ``repo@sha256:<12 hex>`` for a digest reference ``repo@sha256:<64 hex>`` (display only)."""
    repo, _, digest = ref.partition("@")
    algo, _, hexpart = digest.partition(":")
    return f"{repo}@{algo}:{hexpart[:12]}" if hexpart else ref


class _Fact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineFact(_Fact):
    """What the engine says about itself, plus the filesystem holding its data root."""

    name: str
    engine_id: str = ""
    server_version: str
    api_version: str
    storage_driver: str
    # "overlay2"/"graphdriver" or "containerd" (Docker 29's image store): size fields differ there.
    image_store: Literal["graphdriver", "containerd"] = "graphdriver"
    data_root: str
    os: str = ""
    kernel: str = ""
    # statfs of the data root, when the control node can see it (local engines); None otherwise.
    fs_total_bytes: int | None = None
    fs_used_bytes: int | None = None
    fs_free_bytes: int | None = None
    # Reasons the numbers are approximate (containerd store, unknown layer mapping, ...).
    approximate: list[str] = Field(default_factory=list)


class ImageFact(_Fact):
    """One top-level image (what `docker images` lists), with its layer chain."""

    id: str  # sha256:...
    repo_tags: list[str] = Field(default_factory=list)  # never contains "<none>:<none>"
    repo_digests: list[str] = Field(default_factory=list)
    created: datetime
    size: int  # bytes, as the engine reports (all layers)
    shared_size: int | None = None  # from /system/df; None when the engine does not say
    # Chain IDs of the image's layers, base first. Two images share a layer iff they share a chain ID.
    layers: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    # The image it was built on, when the classic builder made it ("" otherwise; BuildKit records none).
    parent_id: str = ""
    # When the image arrived on this engine (built, pulled, loaded, imported): what "fresh" is measured
    # from, never from ``created`` (a 2020 image loaded a minute ago is fresh). None = unknown, which
    # planning treats as fresh. ``arrival_source`` names the evidence (one of ARRIVAL_SOURCES, "" if none).
    arrived_at: datetime | None = None
    arrival_source: str = ""

    @property
    def dangling(self) -> bool:
        """Return True for an image with no tag and no repository digest (see ``is_dangling``)."""
        return is_dangling(self.repo_tags, self.repo_digests)

    @property
    def digest_only(self) -> bool:
        """Return True for an image named only by repository digest(s) (pulled by digest): not dangling."""
        return not self.repo_tags and not self.dangling

    @property
    def names(self) -> list[str]:
        """Return every reference naming the image: its tags, then its repository digests."""
        return [*self.repo_tags, *self.repo_digests]

    @property
    def display_name(self) -> str:
        """Return the first tag, else the first digest reference (shortened), else the short ID."""
        if self.repo_tags:
            return self.repo_tags[0]
        if self.repo_digests:
            return short_digest_ref(self.repo_digests[0])
        return self.id.removeprefix("sha256:")[:12]


class ContainerFact(_Fact):
    """One container, running or stopped, and the image it was created from."""

    id: str
    name: str
    image_id: str  # sha256:... (what protects the image)
    image_ref: str = ""  # what it was created from, as written (tag or ID)
    state: str  # running, exited, created, paused, restarting, dead
    created: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    volumes: list[str] = Field(default_factory=list)  # names of mounted volumes

    @property
    def running(self) -> bool:
        """Return True while the container runs (or is paused/restarting)."""
        return self.state in {"running", "paused", "restarting"}

    @property
    def compose_service(self) -> str | None:
        """Return the compose service this container belongs to, if any."""
        return self.labels.get("com.docker.compose.service")


class VolumeFact(_Fact):
    """One volume. Volumes are reported, never removal candidates (safety invariant 2)."""

    name: str
    driver: str = "local"
    created: datetime | None = None
    anonymous: bool = False
    size: int | None = None  # from /system/df; -1 from the engine becomes None
    ref_count: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class BuildCacheFact(_Fact):
    """One build-cache record (BuildKit)."""

    id: str
    type: str = ""
    description: str = ""
    size: int
    in_use: bool = False
    shared: bool = False
    created: datetime | None = None
    last_used: datetime | None = None


class HostSnapshot(_Fact):
    """Everything the read-only facts layer learned about one host at one moment."""

    host: str
    collected_at: datetime
    engine: EngineFact
    images: list[ImageFact] = Field(default_factory=list)
    containers: list[ContainerFact] = Field(default_factory=list)
    volumes: list[VolumeFact] = Field(default_factory=list)
    build_cache: list[BuildCacheFact] = Field(default_factory=list)
    # Size in bytes of every layer by chain ID (the unit in which disk is actually freed).
    layer_sizes: dict[str, int] = Field(default_factory=dict)
    # The engine's own /system/df LayersSize: what all image layers occupy, shared ones counted once.
    df_layers_size: int | None = None
    # Image ID -> parent image ID for every image with a parent, intermediate build images included (read
    # only when a top-level image has a parent, i.e. the classic builder was used on this host). The engine
    # refuses, without force, to delete an image that has a child image.
    image_parents: dict[str, str] = Field(default_factory=dict)

    def image(self, ref: str) -> ImageFact | None:
        """Return the image with this tag, digest reference (``repo@sha256:...``), full ID or ID prefix, or None."""
        bare = ref.removeprefix("sha256:")
        for img in self.images:
            if (
                ref in img.repo_tags
                or ref in img.repo_digests
                or img.id == ref
                or (len(bare) >= 12 and img.id.removeprefix("sha256:").startswith(bare))
            ):
                return img
        if ":" not in ref and "@" not in ref:
            return self.image(f"{ref}:latest")
        return None

    def with_ledger(self, first_seen: dict[str, datetime]) -> HostSnapshot:
        """Return the snapshot with ``first_seen`` (image ID -> first sighting by this tool) as the arrival of
        every image the engine gave no arrival for (``arrival_source`` "ledger"); others are unchanged."""
        if not any(img.arrived_at is None and img.id in first_seen for img in self.images):
            return self
        images = [
            img.model_copy(update={"arrived_at": first_seen[img.id], "arrival_source": "ledger"})
            if img.arrived_at is None and img.id in first_seen
            else img
            for img in self.images
        ]
        return self.model_copy(update={"images": images})

    def containers_using(self, image_id: str) -> list[ContainerFact]:
        """Return every container (running or stopped) created from ``image_id``."""
        return [c for c in self.containers if c.image_id == image_id]

    def ancestors(self, image_id: str) -> list[str]:
        """Return the IDs of the images ``image_id`` was built on, nearest first (classic builder only)."""
        chain: list[str] = []
        current = self.image_parents.get(image_id, "")
        while current and current not in chain and current != image_id:
            chain.append(current)
            current = self.image_parents.get(current, "")
        return chain


class Unreachable(_Fact):
    """A host whose facts could not be read, and why."""

    host: str
    reason: str


class Baseline(_Fact):
    """A host's storage as first analysed: what "reduced by 90 %" is measured against."""

    host: str
    recorded_at: datetime
    images_bytes: int  # layers on disk (shared layers once): /system/df LayersSize
    build_cache_bytes: int
    image_count: int
    dangling_count: int
    dangling_bytes: int  # bytes removing every dangling image frees (unique layers)
    per_image: dict[str, int] = Field(default_factory=dict)  # display name -> size


class GateVerdict(_Fact):
    """One phase-2 gate's verdict on a built image (size cap, smoke test, dev-tool scan, ...)."""

    name: str
    passed: bool
    detail: str = ""


class BuildRecord(_Fact):
    """One service build as one host received it (written by phase 2): success criteria 2, 3 and 5 read these."""

    host: str
    service: str
    image: str  # the service's release reference (repository:tag)
    ok: bool  # the build succeeded
    seconds: float  # the build's wall time (the one build of this source, on the builder)
    size: int | None = None  # bytes of the built image ("after")
    finished_at: datetime
    error: str | None = None
    image_id: str | None = None  # sha256:... — the same on every host
    digest: str | None = None  # registry manifest digest (sha256:...) when shipped through a registry
    source_hash: str | None = None  # what was built (builds.source_hash)
    size_before: int | None = None  # bytes of the image the release tag named on this host before
    builder: str | None = None  # the host whose engine built it
    shipped_via: Literal["present", "registry", "engine"] | None = None
    gates: list[GateVerdict] = Field(default_factory=list)
    released: bool = False  # the release tag names this image on this host (every gate passed)

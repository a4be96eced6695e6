"""The safety campaign (issue 14): random engine states, built for real, and the invariants after every run.

``build_state(engine, seed, registry)`` turns one seed into one engine state in seconds, always the same
for the same seed: small busybox images on shared bases (classic-builder parent chains, multi-stage leftovers,
BuildKit builds with their build cache), multi-tag images, tags carrying a registry host:port, images pulled
by digest only from the sandbox registry (the engine's ``dangling=true`` filter lists them) and pulled ones
that also carry tags, old images (Created years ago) ``docker load``ed just now, containers in every state
(created, running, paused, exited) — several on one image, some on images whose tag moved away (dangling) —
named and anonymous volumes holding data, protected tags and rollback tags.

``truth(engine)`` reads what is there with the docker CLI, the Engine API through curl and the volumes'
files on disk — never through the tool's own facts code — and ``must_stay`` derives from it, independently
of the planner, what no run may touch. ``campaign`` runs, per batch of states (one state per sandbox
engine), analyze, phase 1 with an aggressive policy (every image listed, minimum ages 0, cache budget 0)
and hygiene with a zero watermark, each twice, checking after every run:

- each image a container uses still exists with all its tags and digests;
- containers unchanged (same set, state, image);
- volumes and their data intact (a checksum of every file);
- images a protected pattern matches, and rollback-tagged images, kept whole;
- predicted bytes = bytes the engine freed (``/system/df``: layers + unshared build cache) within 1 %;
- analyze changes nothing; a second run of each command changes nothing.

``python -m bench.chaos`` (``make chaos``; CHAOS_STATES, CHAOS_SEED, CHAOS_HOSTS, CHAOS_DIR) writes
bench/results/safety.md. State k of a campaign has seed CHAOS_SEED + k, so a failing seed replays alone:
``make chaos CHAOS_SEED=<seed> CHAOS_STATES=1``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

DOCKER = "/usr/bin/docker"  # the 20.10 CLI: its classic builder and BuildKit both work without buildx
ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv" / "bin" / "acgs-remediate")
RESULTS = ROOT / "bench" / "results" / "safety.md"
OLD = 30 * 86400  # seconds: how long ago most images "arrived" (their image store file time)
PROTECTED = ["chaos/keep*:*", "*:stable"]
SERVICE_REPO = "chaos/svc"  # the policy's one service: its REPO:rollback-<id12> tags are kept for rollback
TOLERANCE = 0.01  # predicted vs freed bytes
ROLLBACK_KEEP = 2  # the policy's rollback_keep


class ChaosError(RuntimeError):
    """A docker command of the generator failed (not an invariant violation: the state could not be built)."""


class Engine:
    """One sandbox engine, seen only through the docker CLI, curl on its socket and its files on disk."""

    def __init__(self, name: str, docker_host: str, workdir: Path) -> None:
        self.name = name
        self.docker_host = docker_host
        self.sock = docker_host.removeprefix("unix://")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.root = Path(self.docker("info", "--format", "{{.DockerRootDir}}"))

    def docker(self, *args: str, buildkit: bool = False, stdin: bytes | None = None, check: bool = True) -> str:
        """Run the docker CLI against this engine; return stdout. Raise ChaosError when ``check`` and it fails."""
        env = {
            **os.environ,
            "DOCKER_BUILDKIT": "1" if buildkit else "0",
            "DOCKER_CONFIG": str(self.workdir / "docker-cli"),
            "BUILDKIT_PROGRESS": "plain",
        }
        proc = subprocess.run([DOCKER, "-H", self.docker_host, *args], input=stdin, env=env, capture_output=True)
        if check and proc.returncode != 0:
            raise ChaosError(f"{self.name}: docker {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace").strip()

    def api(self, path: str) -> Any:
        """GET an Engine API path through curl on the unix socket; return the decoded JSON."""
        proc = subprocess.run(
            ["curl", "-sf", "--max-time", "120", "--unix-socket", self.sock, f"http://engine{path}"],
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ChaosError(f"{self.name}: GET {path} failed (curl exit {proc.returncode})")
        return json.loads(proc.stdout)

    def wipe(self) -> None:
        """Remove every container, image, volume and build cache record (the harness's own force, never the tool's)."""
        ids = self.docker("ps", "-aq").split()
        if ids:
            self.docker("rm", "-f", "-v", *ids)
        vols = self.docker("volume", "ls", "-q").split()
        if vols:
            self.docker("volume", "rm", "-f", *vols)
        for _ in range(5):
            images = self.docker("images", "-aq", "--no-trunc").split()
            if not images:
                break
            self.docker("rmi", "-f", *sorted(set(images)), check=False)
        self.docker("builder", "prune", "-af", buildkit=True)

    def age(self, keep_fresh: set[str], seconds: int = OLD) -> None:
        """Date every image but ``keep_fresh`` ``seconds`` back: the image store's file time is its arrival."""
        content = self.root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
        when = time.time() - seconds
        for path in content.iterdir():
            if f"sha256:{path.name}" not in keep_fresh:
                os.utime(path, (when, when))


# --- the generator ----------------------------------------------------------------------------------------


@dataclass
class Built:
    """What the generator made of one seed (counts for the report; the truth is read from the engine)."""

    seed: int
    images: list[str] = field(default_factory=list)  # top-level image IDs it built, pulled or loaded
    fresh: set[str] = field(default_factory=set)  # image IDs left "just arrived"
    kinds: dict[str, int] = field(default_factory=dict)  # what it made, counted by kind
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds per generator step

    def count(self, kind: str, n: int = 1) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + n


class _Gen:
    def __init__(self, eng: Engine, seed: int, registry: str | None) -> None:
        self.eng = eng
        self.rng = random.Random(seed)
        self.seed = seed
        self.registry = registry
        self.built = Built(seed)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"s{seed}-", dir=eng.workdir))
        self.tagged: list[str] = []  # tags made so far (bases for later images)
        self.n = 0

    def blob(self) -> bytes:
        size = self.rng.choice([1_000, 4_000, 30_000, 200_000, 700_000, 1_500_000])
        return self.rng.randbytes(size)

    def build(
        self, dockerfile: str, files: dict[str, bytes], tags: list[str], buildkit: bool = False, track: bool = True
    ) -> str:
        self.n += 1
        ctx = self.tmp / f"ctx{self.n}"
        ctx.mkdir()
        for name, data in files.items():
            (ctx / name).write_bytes(data)
            (ctx / name).chmod(0o755)
        (ctx / "Dockerfile").write_text(dockerfile)
        iidfile = ctx.parent / f"iid{self.n}"
        args = ["build", "-q", "--network", "none", "--iidfile", str(iidfile)]
        for tag in tags:
            args += ["-t", tag]
        self.eng.docker(*args, str(ctx), buildkit=buildkit)
        self.built.count("buildkit builds" if buildkit else "classic builds")
        image_id = iidfile.read_text().strip()
        if track:
            self.track(image_id)
        if tags:
            self.tagged.extend(tags)
        return image_id

    def track(self, image_id: str) -> None:
        """Record an image the generator made; draw whether it stays "just arrived"."""
        self.built.images.append(image_id)
        if self.rng.random() < 0.2:
            # Left "just arrived" (hygiene keeps it by fresh_min_age; phase 1 at 0 s does not). Drawn here, in
            # build order, so the same seed leaves the same images fresh (image IDs differ between builds).
            self.built.fresh.add(image_id)

    def tags(self) -> list[str]:
        """Return 0-3 tags from a small pool (so tags collide: a rebuilt tag leaves its old image dangling)."""
        k = self.rng.choices([0, 1, 2, 3], weights=[1, 5, 3, 1])[0]
        pool = []
        for _ in range(k):
            repo = self.rng.choice(
                [
                    "chaos/app1",
                    "chaos/app2",
                    "chaos/app3",
                    "chaos/keep1",
                    "registry.local:5000/chaos/app1",
                    "localhost:5000/team/app4",
                    SERVICE_REPO,
                ]
            )
            version = self.rng.choice(["1", "2", "latest", "stable"])
            pool.append(f"{repo}:{version}")
        return sorted(set(pool))

    def parent(self) -> str:
        return self.rng.choice(self.tagged)

    def base(self) -> None:
        archive = self.eng.workdir / "chaos-base.tar"
        if archive.exists():  # the same busybox base on every state: built once per engine, then loaded
            self.eng.docker("load", "-q", "-i", str(archive))
            self.tagged.append("chaos/base:1")
            self.n += 1  # as the build would: later files are named alike either way
        else:
            busybox = Path(os.path.realpath(shutil.which("busybox") or "/bin/busybox")).read_bytes()
            self.build(
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\n",
                {"busybox": busybox},
                ["chaos/base:1"],
                track=False,
            )
            self.eng.docker("save", "-o", f"{archive}.tmp", "chaos/base:1")
            os.replace(f"{archive}.tmp", archive)
        self.track(self.eng.docker("image", "inspect", "--format", "{{.Id}}", "chaos/base:1"))
        # A second base on the first (a classic parent chain), shared by what follows.
        self.build("FROM chaos/base:1\nCOPY blob /base2\n", {"blob": self.blob()}, ["chaos/base:2"])

    def images(self) -> None:
        for _ in range(self.rng.randint(4, 7)):
            kind = self.rng.choices(["classic", "chain", "multistage", "buildkit"], weights=[5, 1, 1, 2])[0]
            parent = self.parent()
            tags = self.tags()
            if kind == "classic":
                self.build(f"FROM {parent}\nCOPY blob /blob{self.n}\n", {"blob": self.blob()}, tags)
            elif kind == "chain":  # each COPY leaves an intermediate image: a parent chain of 3
                self.build(
                    f"FROM {parent}\nCOPY a /a{self.n}\nCOPY b /b{self.n}\nCOPY c /c{self.n}\n",
                    {"a": self.blob(), "b": self.blob(), "c": self.blob()},
                    tags,
                )
            elif kind == "multistage":  # the classic builder leaves the first stage behind, dangling
                self.build(
                    f"FROM {parent} AS stage\nCOPY blob /stage\nFROM {parent}\nCOPY --from=stage /stage /x\n"
                    "COPY small /small\n",
                    {"blob": self.blob(), "small": self.blob()},
                    tags,
                )
                self.built.count("multi-stage builds")
            else:  # BuildKit: no intermediate images, but build cache (a RUN step's too)
                size = self.rng.choice([10_000, 300_000, 1_000_000])
                self.build(
                    f"FROM {parent}\nCOPY blob /bk{self.n}\nRUN busybox head -c {size} /bk{self.n} > /run{self.n}\n",
                    {"blob": self.blob()},
                    tags,
                    buildkit=True,
                )
        # Several references on one image, one of them a protected or rollback one sometimes.
        ids = self.built.images[2:]
        for image_id in self.rng.sample(ids, k=min(len(ids), self.rng.randint(1, 3))):
            extra = self.rng.choice(
                [
                    "chaos/multi:a",
                    "chaos/multi:b",
                    "chaos/keep2:x",
                    "team/web:stable",
                    f"{SERVICE_REPO}:rollback-{image_id.removeprefix('sha256:')[:12]}",
                ]
            )
            self.eng.docker("tag", image_id, extra)
            self.built.count("extra tags")

    def pulled(self) -> None:
        if not self.registry:
            return
        for j in range(self.rng.choice([1, 1, 2])):
            repo = f"{self.registry}/chaos/s{self.seed}-p{j}"
            image_id = self.build(
                f"FROM {self.parent()}\nCOPY blob /pulled{j}\n", {"blob": self.blob()}, [f"{repo}:push"]
            )
            self.built.images.remove(image_id)
            self.tagged.remove(f"{repo}:push")
            self.eng.docker("push", "-q", f"{repo}:push")
            digest = next(
                d
                for d in json.loads(self.eng.docker("image", "inspect", "--format", "{{json .RepoDigests}}", image_id))
            )
            self.eng.docker("rmi", f"{repo}:push")
            self.eng.docker("rmi", digest, check=False)
            self.eng.docker("pull", "-q", digest)  # by digest: no tag, the engine lists it as dangling
            self.built.images.append(image_id)
            self.built.fresh.add(image_id)
            self.built.count("pulled by digest")
            how = self.rng.choice(["digest only", "and tags", "and tags", "and one tag"])
            if how == "and tags":  # tags AND a registry digest: phase 1 must remove every reference or none
                self.eng.docker("tag", digest, f"chaos/pulled{j}:1")
                self.eng.docker("tag", digest, f"chaos/pulled{j}:2")
                self.built.count("pulled by digest, then tagged twice")
            elif how == "and one tag":
                self.eng.docker("tag", digest, f"chaos/pulled{j}:1")
                self.built.count("pulled by digest, then tagged once")

    def loaded(self) -> None:
        for j in range(self.rng.randint(0, 2)):
            tag = f"chaos/old{j}:1"
            image_id = self.build(f"FROM {self.parent()}\nCOPY blob /old{j}\n", {"blob": self.blob()}, [tag])
            self.built.images.remove(image_id)
            self.tagged.remove(tag)
            archive = self.tmp / f"old{j}.tar"
            self.eng.docker("save", "-o", str(archive), tag)
            new_id = _backdate_archive(archive)
            self.eng.docker("rmi", tag)
            self.eng.docker("load", "-q", "-i", str(archive))
            self.built.images.append(new_id)
            self.built.fresh.add(new_id)
            self.tagged.append(tag)
            self.built.count("old images loaded just now")

    def containers(self) -> None:
        refs = [*self.tagged, *self.rng.sample(self.built.images, k=min(2, len(self.built.images)))]
        for i in range(self.rng.randint(4, 7)):
            ref = self.rng.choice(refs)
            state = self.rng.choice(["created", "running", "paused", "exited", "exited"])
            name = f"c{i}"
            base = ["--name", name, "--network", "none", "--label", f"chaos.seed={self.seed}"]
            if self.rng.random() < 0.3:
                base += ["-v", f"chaos-vol{i % 2}:/data"]
            elif self.rng.random() < 0.2:
                base += ["-v", "/anon"]
            if state == "created":
                self.eng.docker("create", *base, ref, "true")
            elif state in ("running", "paused"):
                self.eng.docker("run", "-d", "--init", *base, ref, "/bin/busybox", "sleep", "100000")
                if state == "paused":
                    self.eng.docker("pause", name)
            else:
                code = self.rng.choice([0, 3])
                self.eng.docker("run", *base, ref, "sh", "-c", f"echo {self.seed} > /tmp/x; exit {code}", check=False)
            self.built.count(f"containers {state}")
        # Volumes holding data: a named one whose container is gone, and one written by a kept container.
        token = self.rng.randint(1, 10**9)
        size = self.rng.choice([1_000, 100_000, 2_000_000])
        self.eng.docker(
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "chaos-data:/data",
            "chaos/base:1",
            "sh",
            "-c",
            f"busybox yes {token} | busybox head -c {size} > /data/f; busybox mkdir -p /data/d; "
            f"echo {token} > /data/d/g",
        )
        self.eng.docker(
            "run",
            "--name",
            "writer",
            "--network",
            "none",
            "-v",
            "/anon",
            "chaos/base:1",
            "sh",
            "-c",
            f"busybox yes {token} | busybox head -c {size // 2} > /anon/f",
        )
        self.built.count("volumes written", 2)

    def moved_tags(self) -> None:
        """Rebuild some tags a container uses: their old images stay, dangling, used by that container."""
        used = self.eng.docker("ps", "-a", "--format", "{{.Image}}").split()
        movable = sorted(
            {
                r
                for r in used
                if ":" in r and not r.startswith("sha256") and r in self.tagged and not r.startswith("chaos/base")
            }
        )
        for tag in self.rng.sample(movable, k=min(len(movable), self.rng.randint(1, 2))):
            self.build("FROM chaos/base:1\nCOPY blob /moved\n", {"blob": self.blob()}, [tag])
            self.built.count("tags moved off a used image")


def _backdate_archive(archive: Path) -> str:
    """Rewrite a ``docker save`` archive so its image was created in 2019; return the new image ID."""
    with tarfile.open(archive) as tar:
        members = {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}
    manifest = json.loads(members["manifest.json"][1])
    old_config = manifest[0]["Config"]
    config = json.loads(members[old_config][1])
    config["created"] = "2019-03-01T12:00:00Z"
    for h in config.get("history", []):
        h["created"] = "2019-03-01T12:00:00Z"
    data = json.dumps(config, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    manifest[0]["Config"] = f"{digest}.json"
    del members[old_config]
    members.pop("repositories", None)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for name, (member, content) in members.items():
            if name == "manifest.json":
                content = json.dumps(manifest).encode()
                member.size = len(content)
            out.addfile(member, io.BytesIO(content) if content is not None else None)
        info = tarfile.TarInfo(f"{digest}.json")
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    archive.write_bytes(buf.getvalue())
    return f"sha256:{digest}"


def build_state(eng: Engine, seed: int, registry: str | None) -> Built:
    """Wipe ``eng`` and build the random state of ``seed`` on it (same seed, same state); return what was made.

    ``registry``: the sandbox registry's host:port (images are pushed there and pulled back by digest), or
    None to make no pulled images. Raises ChaosError when a docker command fails.
    """
    t0 = time.monotonic()
    eng.wipe()
    gen = _Gen(eng, seed, registry)
    try:
        for step in (gen.base, gen.images, gen.pulled, gen.loaded, gen.containers, gen.moved_tags):
            t1 = time.monotonic()
            step()
            gen.built.steps[step.__name__] = time.monotonic() - t1
        eng.age(gen.built.fresh)
    finally:
        shutil.rmtree(gen.tmp, ignore_errors=True)
    gen.built.seconds = time.monotonic() - t0
    return gen.built


# --- the truth, read independently of the tool ------------------------------------------------------------


@dataclass
class Truth:
    """What an engine holds, read with the docker CLI, curl and the volumes' files."""

    images: dict[str, tuple[frozenset[str], frozenset[str]]]  # top-level image ID -> (tags, digests)
    all_images: set[str]  # every image ID, intermediates included
    containers: dict[str, tuple[str, str, str]]  # container ID -> (name, state, image ID)
    volumes: dict[str, str]  # volume name -> sha256 of its files (paths and contents)
    own_bytes: int  # /system/df: LayersSize + unshared build cache
    # For the rollback rule: container ID -> (image reference it was created from, created, running), and
    # image ID -> created (RFC 3339 strings of one engine compare in time order once normalised to UTC).
    container_refs: dict[str, tuple[str, str, bool]] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)

    def same_as(self, other: Truth) -> list[str]:
        """Return the differences from ``other`` (empty: nothing changed)."""
        diffs = []
        for what in ("images", "containers", "volumes"):
            a, b = getattr(self, what), getattr(other, what)
            if a != b:
                gone = sorted(set(a) - set(b))
                new = sorted(set(b) - set(a))
                changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
                diffs.append(f"{what}: gone {gone[:5]} new {new[:5]} changed {changed[:5]}")
        if self.all_images != other.all_images:
            diffs.append(f"intermediate images: gone {sorted(self.all_images - other.all_images)[:5]}")
        if self.own_bytes != other.own_bytes:
            diffs.append(f"engine bytes {self.own_bytes} -> {other.own_bytes}")
        return diffs


def _tree_sum(path: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(path)).encode() + b"\0")
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


def truth(eng: Engine) -> Truth:
    """Read ``eng``'s images, containers, volumes and bytes without the tool's code."""
    images: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    created: dict[str, str] = {}
    container_refs: dict[str, tuple[str, str, bool]] = {}
    top = eng.docker("images", "-q", "--no-trunc").split()
    if top:
        for info in json.loads(eng.docker("image", "inspect", *sorted(set(top)))):
            tags = frozenset(t for t in info.get("RepoTags") or [] if t != "<none>:<none>")
            digests = frozenset(d for d in info.get("RepoDigests") or [] if not d.startswith("<none>@"))
            images[info["Id"]] = (tags, digests)
            created[info["Id"]] = info["Created"]
    all_images = set(eng.docker("images", "-aq", "--no-trunc").split())
    containers = {}
    ids = eng.docker("ps", "-aq", "--no-trunc").split()
    if ids:
        for c in json.loads(eng.docker("inspect", *ids)):
            containers[c["Id"]] = (c["Name"].lstrip("/"), c["State"]["Status"], c["Image"])
            container_refs[c["Id"]] = (c["Config"]["Image"], c["Created"], c["State"]["Status"] == "running")
    volumes = {}
    names = eng.docker("volume", "ls", "-q").split()
    if names:
        for v in json.loads(eng.docker("volume", "inspect", *names)):
            volumes[v["Name"]] = _tree_sum(Path(v["Mountpoint"]))
    df = eng.api("/system/df")
    cache = sum(int(b.get("Size") or 0) for b in df.get("BuildCache") or [] if not b.get("Shared"))
    own = int(df.get("LayersSize") or 0) + cache
    return Truth(images, all_images, containers, volumes, own, container_refs, created)


@dataclass
class MustStay:
    """What no run may remove or change, derived from a Truth and the policy (not from the tool's planner)."""

    used: dict[str, tuple[frozenset[str], frozenset[str]]]  # image ID a container uses -> its names
    protected: dict[str, tuple[frozenset[str], frozenset[str]]]  # protected pattern matches
    rollback: dict[str, tuple[frozenset[str], frozenset[str]]]  # REPO:rollback-* of the service


def must_stay(t: Truth, patterns: list[str] = PROTECTED) -> MustStay:
    """Return what must stay whole on an engine whose contents are ``t``."""
    used_ids = {image for _, _, image in t.containers.values()}
    used = {i: t.images[i] for i in used_ids if i in t.images}
    protected = {
        i: names
        for i, names in t.images.items()
        if any(fnmatch.fnmatchcase(ref, p) for ref in (*names[0], *names[1]) for p in patterns)
    }
    rollback = {
        i: names
        for i, names in t.images.items()
        if any(tag.startswith(f"{SERVICE_REPO}:rollback-") for tag in names[0])
    }
    # The service (image chaos/svc:latest) deployed here: the image its current container runs (a running
    # one, else the newest) and the previous ``rollback_keep`` images of its repository by creation time.
    deployed = [(cid, ref) for cid, ref in t.container_refs.items() if ref[0] == f"{SERVICE_REPO}:latest"]
    if deployed:
        running = [d for d in deployed if d[1][2]] or deployed
        current_cid = max(running, key=lambda d: d[1][1])[0]
        current = t.containers[current_cid][2]
        if current in t.images:
            rollback[current] = t.images[current]

            def utc(i: str) -> datetime:
                return _rfc3339(t.created[i])

            older = sorted(
                (
                    i
                    for i, (tags, digests) in t.images.items()
                    if i != current
                    and utc(i) <= utc(current)
                    and any(r.startswith((f"{SERVICE_REPO}:", f"{SERVICE_REPO}@")) for r in (*tags, *digests))
                ),
                key=utc,
                reverse=True,
            )
            for i in older[:ROLLBACK_KEEP]:
                rollback[i] = t.images[i]
    return MustStay(used, protected, rollback)


def _rfc3339(value: str) -> datetime:
    """Parse the engine's RFC 3339 time (nanoseconds, Z or an offset) to an aware datetime."""
    value = value.replace("Z", "+00:00")
    main, _, rest = value.partition(".")
    if rest:
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        offset = rest[len(digits) :]
        value = f"{main}.{digits[:6].ljust(6, '0')}{offset}"
    return datetime.fromisoformat(value)


def violations(before: Truth, after: Truth, keep: MustStay) -> list[str]:
    """Return every invariant ``after`` breaks (images/containers/volumes part; bytes are checked apart)."""
    found = []
    for what, group in (("used by a container", keep.used), ("protected", keep.protected), ("rollback", keep.rollback)):
        for image_id, (tags, digests) in group.items():
            now = after.images.get(image_id)
            if now is None:
                found.append(f"image {image_id[:19]} ({what}, {sorted(tags) or sorted(digests)}) was removed")
            elif not (tags <= now[0] and digests <= now[1]):
                lost = sorted((tags - now[0]) | (digests - now[1]))
                found.append(f"image {image_id[:19]} ({what}) lost {lost}")
    if before.containers != after.containers:
        changed = sorted(k for k in before.containers if before.containers[k] != after.containers.get(k))
        found.append(f"containers changed: {[(before.containers[k], after.containers.get(k)) for k in changed][:3]}")
    for name, digest in before.volumes.items():
        if name not in after.volumes:
            found.append(f"volume {name} was removed")
        elif after.volumes[name] != digest:
            found.append(f"volume {name}'s data changed")
    # Images that stay keep every name: a run removes an image whole or not at all (a half-removed image
    # keeps its bytes and loses names people deploy by).
    for image_id, (tags, digests) in before.images.items():
        now = after.images.get(image_id)
        if now is not None and now != (tags, digests):
            found.append(f"image {image_id[:19]} stayed but lost {sorted((tags | digests) - (now[0] | now[1]))}")
    return found


# --- running the tool -------------------------------------------------------------------------------------


def write_inventory(workdir: Path, hosts: dict[str, dict[str, Any]], refs: list[str]) -> Path:
    """Write the campaign's inventory: the engines, and an aggressive policy naming every ref in ``refs``."""
    svc = workdir / "sources" / "svc"
    svc.mkdir(parents=True, exist_ok=True)
    (svc / "Dockerfile").write_text('FROM chaos/base:1\nCMD ["sh"]\n')
    policy = {
        "sources_root": str(workdir / "sources"),
        "oversized_images": [{"ref": r, "priority": "HIGH", "reason": "chaos"} for r in sorted(set(refs))],
        "protected_patterns": PROTECTED,
        "rollback_keep": ROLLBACK_KEEP,
        "dangling_min_age": "0s",
        "fresh_min_age": "0s",
        "build_cache_budget": "0B",
        "services": [{"name": "svc", "image": f"{SERVICE_REPO}:latest", "context": "svc"}],
        "hygiene": {
            "high_watermark": "1B",
            "low_watermark": "0B",
            # Far from any run's clock: fresh images arrived minutes ago, the others 30 days ago.
            "fresh_min_age": "1d",
            "dangling_min_age": "0s",
            "unused_min_age": "0s",
            "build_cache_budget": "0B",
        },
    }
    inv = {"all": {"hosts": hosts, "vars": {"acgs_policy": policy}}}
    path = workdir / "inventory.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def run_tool(workdir: Path, inventory: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run acgs-remediate with ``args`` (JSON output); return (exit code, parsed JSON, stderr)."""
    env = {
        **os.environ,
        "PATH": f"{Path(CLI).parent}:{os.environ['PATH']}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
    }
    cmd = [CLI, *args, "-i", str(inventory), "--state", str(workdir / "state.db"), "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    try:
        data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        data = {}
    return proc.returncode, data, proc.stderr


# (name, argv) of the runs made on every state; each is made twice.
RUNS: list[tuple[str, list[str]]] = [
    ("analyze", ["analyze"]),
    ("phase1", ["phase1", "--yes", "--force"]),
    ("hygiene", ["hygiene", "--yes"]),
]


@dataclass
class StateResult:
    """One state's outcome."""

    seed: int
    host: str
    built: Built
    removals: int = 0
    violations: list[str] = field(default_factory=list)
    worst_error: float = 0.0  # |predicted - freed| / max(predicted, freed), worst run
    runs: list[str] = field(default_factory=list)  # "<run>: predicted P freed F removed N"


def _host_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r.get("host"): r for r in data.get("hosts") or [] if isinstance(r, dict)}


def _removed_count(row: dict[str, Any]) -> int:
    for key in ("removed", "images_removed"):
        value = row.get(key)
        if isinstance(value, list):
            return len(value)
        if isinstance(value, int):
            return value
    return 0


def run_batch(
    engines: list[Engine], seeds: list[int], registry: str | None, workdir: Path, log: Any = print
) -> list[StateResult]:
    """Build one state per engine (``seeds[i]`` on ``engines[i]``), run every command twice, check it all."""
    pairs = list(zip(engines, seeds, strict=False))
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        built = list(pool.map(lambda p: build_state(p[0], p[1], registry), pairs))
    results = {e.name: StateResult(seed, e.name, b) for (e, seed), b in zip(pairs, built, strict=True)}
    states = {e.name: truth(e) for e, _ in pairs}
    # Per state, by its seed: hygiene then phase 1 (even seeds) or phase 1 then hygiene (odd seeds), so each
    # meets states the other has not cleaned (after phase 1's aggressive run hygiene finds little left). The
    # order is the seed's, whatever batch it runs in: a seed replays alone exactly. The states of one order
    # run through one tool invocation per step (both orders' invocations run at once).
    groups: dict[str, list[Engine]] = {}
    for e, seed in pairs:
        groups.setdefault("hyg-first" if seed % 2 == 0 else "p1-first", []).append(e)
    steps = {
        "p1-first": [RUNS[0], RUNS[0], RUNS[1], RUNS[1], RUNS[2], RUNS[2]],
        "hyg-first": [RUNS[0], RUNS[0], RUNS[2], RUNS[2], RUNS[1], RUNS[1]],
    }
    inventories = {}
    for key, members in groups.items():
        refs: list[str] = []
        for e in members:
            for tags, digests in states[e.name].images.values():
                refs += [*tags, *digests]
        hosts = {
            e.name: {
                "docker_host": e.docker_host,
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            }
            for e in members
        }
        shutil.rmtree(workdir / key, ignore_errors=True)
        (workdir / key).mkdir(parents=True)
        inventories[key] = write_inventory(workdir / key, hosts, refs)
    current = states  # what each engine holds now: a run's "after" is the next run's "before"
    for k in range(6):
        before = current
        current = {}
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            outcomes = dict(
                zip(
                    groups,
                    pool.map(lambda key, k=k: run_tool(workdir / key, inventories[key], *steps[key][k][1]), groups),
                    strict=True,
                )
            )
        for key, members in groups.items():
            name = steps[key][k][0]
            attempt = 2 if k % 2 else 1
            code, data, stderr = outcomes[key]
            # Kept for the post-mortem of a violation: what the tool planned, removed and skipped per host.
            (workdir / key / f"{k + 1}-{steps[key][k][0]}.json").write_text(json.dumps(data, indent=1))
            rows = _host_rows(data)
            for e in members:
                res = results[e.name]
                after = current[e.name] = truth(e)
                label = f"{name} #{attempt}"
                if code != 0:
                    res.violations.append(f"{label}: exit {code}: {stderr.strip().splitlines()[-1:] or ''}")
                found = violations(before[e.name], after, must_stay(before[e.name]))
                if name == "analyze" or attempt == 2:
                    found += [f"changed: {d}" for d in before[e.name].same_as(after)]
                freed = before[e.name].own_bytes - after.own_bytes
                row = rows.get(e.name, {})
                predicted = int(row.get("predicted_bytes") or 0) if name != "analyze" else 0
                if name != "analyze":
                    if not row:
                        found.append("no result row for the host in the JSON output")
                    worst = max(predicted, freed, 1)
                    error = abs(predicted - freed) / worst
                    if abs(predicted - freed) > TOLERANCE * worst:
                        found.append(f"predicted {predicted} B, engine freed {freed} B")
                    res.worst_error = max(res.worst_error, error)
                    removed = len(set(before[e.name].images) - set(after.images))
                    res.removals += removed
                    res.runs.append(f"{label}: predicted {predicted} freed {freed} removed {removed}")
                res.violations += [f"{label}: {v}" for v in found]
    for r in results.values():
        log(
            f"seed {r.seed} on {r.host}: built in {r.built.seconds:.1f} s, {r.removals} removals, "
            f"worst error {r.worst_error:.4%}, {len(r.violations)} violations"
        )
        for v in r.violations:
            log(f"    {v}")
    return list(results.values())


def write_report(
    results: list[StateResult], command: str, seconds: float, path: Path = RESULTS, planned: int | None = None
) -> None:
    """Write bench/results/safety.md: states, removals, violations, worst prediction error, failing seeds."""
    failed = [r for r in results if r.violations]
    worst = max((r.worst_error for r in results), default=0.0)
    kinds: dict[str, int] = {}
    for r in results:
        for k, n in r.built.kinds.items():
            kinds[k] = kinds.get(k, 0) + n
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    lines = [
        "# Safety campaign: random engine states (issue 14)",
        "",
        f"Command: `{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s, "
        f"load average {' '.join(load)} at the end.",
        "",
        "Per state: analyze, phase1 (every image listed, minimum ages 0, cache budget 0) and hygiene "
        "(watermark 1B/0B, unused and dangling ages 0), each twice; invariants checked after every run "
        "from the docker CLI, the Engine API (curl) and the volumes' files — never the tool's facts code "
        "(bench/chaos.py).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| states | {len(results)}"
        + (f" (of {planned} asked; still running or interrupted)" if planned and planned > len(results) else "")
        + " |",
        f"| removals (images the engine no longer has after a run) | {sum(r.removals for r in results)} |",
        f"| violations | {sum(len(r.violations) for r in results)} |",
        f"| states with a violation | {len(failed)} |",
        f"| seconds to build a state (mean, under that load) | "
        f"{sum(r.built.seconds for r in results) / max(len(results), 1):.0f} |",
        f"| worst prediction error (predicted vs freed bytes) | {worst:.4%} |",
        f"| seeds of failures | {', '.join(str(r.seed) for r in failed) or 'none'} |",
        "",
        "What the states held, summed over all states:",
        "",
        *[f"- {k}: {n}" for k, n in sorted(kinds.items())],
        "",
    ]
    if failed:
        lines += ["## Failures (replay one: `make chaos CHAOS_SEED=<seed> CHAOS_STATES=1`)", ""]
        for r in failed:
            lines.append(f"- seed {r.seed}:")
            lines += [f"  - {v}" for v in r.violations[:10]]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def engines_of(sandbox: Any, workdir: Path) -> list[Engine]:
    """Return the Engine of every host of a running sandbox."""
    inv = yaml.safe_load(sandbox.inventory_path.read_text())
    hosts = inv["all"]["children"]["sandbox"]["hosts"]
    return [Engine(name, v["docker_host"], workdir / name) for name, v in hosts.items()]


def campaign(
    states: int, seed: int, hosts: int, directory: Path, log: Any = print, progress: Any = None
) -> list[StateResult]:
    """Run ``states`` states (seeds seed .. seed+states-1) on a ``hosts``-engine sandbox in ``directory``.

    ``progress(results)`` is called after each batch with the results so far.
    """
    from acgs_remediate.sandbox import Sandbox

    sb = Sandbox(directory)
    st = sb.up(hosts, None, log=log, registry=True)
    registry = st.registry
    workdir = directory / "chaos-work"
    engines = engines_of(sb, workdir)
    results: list[StateResult] = []
    seeds = list(range(seed, seed + states))
    for i in range(0, len(seeds), len(engines)):
        batch = seeds[i : i + len(engines)]
        t0 = time.monotonic()
        results += run_batch(engines[: len(batch)], batch, registry, workdir, log=log)
        log(f"batch {batch}: {time.monotonic() - t0:.0f} s")
        if progress is not None:
            progress(results)  # the report so far: an interrupted campaign still leaves its figures
    return results


def main() -> int:
    """`make chaos`: run the campaign from CHAOS_* environment values, write bench/results/safety.md."""
    states = int(os.environ.get("CHAOS_STATES") or 50)
    seed = int(os.environ.get("CHAOS_SEED") or 1)
    hosts = int(os.environ.get("CHAOS_HOSTS") or 3)
    directory = Path(os.environ.get("CHAOS_DIR") or "/var/lib/acgs-chaos")
    t0 = time.monotonic()
    command = f"make chaos CHAOS_STATES={states} CHAOS_SEED={seed} CHAOS_HOSTS={hosts}"

    def progress(so_far: list[StateResult]) -> None:
        write_report(so_far, command, time.monotonic() - t0, planned=states)

    results = campaign(
        states, seed, min(hosts, states), directory, log=lambda m: print(m, flush=True), progress=progress
    )
    write_report(results, command, time.monotonic() - t0, planned=states)
    bad = [r for r in results if r.violations]
    print(
        f"{len(results)} states, {sum(r.removals for r in results)} removals, "
        f"{sum(len(r.violations) for r in results)} violations; report: {RESULTS}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Write a baseline and a build record for one host into an acgs-remediate state store (molecule prepare)."""

import sys
from datetime import UTC, datetime
from pathlib import Path

from acgs_remediate.models import Baseline, BuildRecord
from acgs_remediate.state import StateStore

store = StateStore(Path(sys.argv[1]))
host = sys.argv[2]
now = datetime.now(UTC)
store.record_baseline(Baseline(host=host, recorded_at=now, images_bytes=1_000_000_000, build_cache_bytes=0,
                               image_count=40, dangling_count=10, dangling_bytes=100_000_000))
store.add_build_record(
    BuildRecord(host=host, service="svc", image="sc-svc:1", ok=True, seconds=12.0, finished_at=now)
)
store.close()

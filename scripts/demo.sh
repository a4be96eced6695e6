#!/usr/bin/env bash
# The main job end to end on a fresh local sandbox fleet:
# analyze -> phase1 -> phase2 -> phase3 -> verify -> status -> hygiene, then where the HTML report is.
# Usage: scripts/demo.sh HOSTS DIR STATE   (make demo passes them)
set -uo pipefail
cd "$(dirname "$0")/.."
HOSTS=${1:-3}; DIR=${2:-/var/lib/acgs-sb}; STATE=${3:-$PWD/.state/demo.db}
export PATH="$PWD/.venv/bin:$PATH"
export ACGS_SANDBOX_DIR="$DIR" ACGS_REMEDIATE_INVENTORY="$DIR/inventory.yml" ACGS_REMEDIATE_STATE="$STATE"
# Phase 1 renders the alembic runner's missing alembic.ini from its template with this URL
# (it never writes an empty file; without a URL that host fails, naming the file and the variable).
export ACGS_DATABASE_URL="${ACGS_DATABASE_URL:-sqlite:////var/lib/acgs/acgs.db}"
mkdir -p reports "$(dirname "$STATE")"
banner() { printf '\n\033[1m━━ %s\033[0m\n$ %s\n' "$1" "$2"; }
run() { banner "$1" "${*:2}"; "${@:2}"; }

# A demo starts from the scenario as seeded: drop an earlier demo fleet and its ledger.
acgs-remediate sandbox down --dir "$DIR" >/dev/null 2>&1 || true
rm -f "$STATE" "$STATE"-wal "$STATE"-shm
run "1. A sandbox fleet of real Docker engines, seeded with the ACGS-1 report's bloat" \
  acgs-remediate sandbox up --hosts "$HOSTS" --scenario acgs-1 --dir "$DIR" || exit $?
run "   What runs" acgs-remediate sandbox status --dir "$DIR"
run "2. The report, from live engines (also written to reports/analyze.md and reports/analyze.html)" \
  acgs-remediate analyze --hosts all
acgs-remediate analyze --hosts all --format markdown -o reports/analyze.md >/dev/null 2>&1
acgs-remediate analyze --hosts all --format html -o reports/analyze.html >/dev/null 2>&1
run "3. Verify before remediation: the success criteria fail" acgs-remediate verify --hosts all
run "4. Phase 1 plan: exactly what will be removed, what it frees, what is protected and why" \
  acgs-remediate plan phase1 --hosts all
run "5. Phase 1: emergency cleanup across the fleet" acgs-remediate phase1 --hosts all --yes
run "6. Phase 1 again: every host already done, nothing changes" acgs-remediate phase1 --hosts all --yes
run "7. Verify after phase 1 (build criteria stay 'not verified' until phase 2 builds)" \
  acgs-remediate verify --hosts all
run "8. Phase 2 plan: per service its optimized Dockerfile, source hash, build once, ship, release tag" \
  acgs-remediate plan phase2 --hosts all
run "9. Phase 2: build each optimized image once, gate it, ship it to every host, move the release tags" \
  acgs-remediate phase2 --hosts all --yes
run "10. Phase 2 again with --force: unchanged sources, nothing rebuilt, nothing changed" \
  acgs-remediate phase2 --hosts all --yes --force
run "11. Phase 3 plan: per host which services switch to the released images (pinned by digest), what stays" \
  acgs-remediate plan phase3 --hosts all
run "12. Phase 3: canary, then batches; each host health-gated through its soak window, rolled back on failure" \
  acgs-remediate phase3 --hosts all --yes
run "13. Phase 3 again: the stack already runs the released images, nothing is recreated" \
  acgs-remediate phase3 --hosts all --yes
run "14. Verify after phases 1, 2 and 3: all five criteria on sb-h01 and sb-h02; on sb-h03 someone still runs
   the oversized gs image and keeps a rocm/pytorch notebook container, so storage cannot reach 90 % there" \
  acgs-remediate verify --hosts all --junit reports/verify.xml
acgs-remediate verify --hosts sb-h01,sb-h02 >/dev/null 2>&1 && echo "verify sb-h01,sb-h02: all five criteria pass" \
  || echo "verify sb-h01,sb-h02: NOT all criteria pass (see above)"
run "15. The report again: service images before -> after (also in reports/analyze-after.html)" \
  acgs-remediate analyze --hosts all
acgs-remediate analyze --hosts all --format html -o reports/analyze-after.html >/dev/null 2>&1
run "16. Where every host stands" acgs-remediate status
run "17. Hygiene, the scheduled run (cron/systemd/AWX): after the three phases every host is clean, nothing to do" \
  acgs-remediate hygiene --hosts all --yes --metrics-file reports/acgs_hygiene.prom
printf '\nHTML report: %s (before: %s)\n' "$PWD/reports/analyze-after.html" "$PWD/reports/analyze.html"
printf 'Also: reports/analyze.md, reports/verify.xml, reports/acgs_hygiene.prom. Stop the fleet: make demo-down\n'

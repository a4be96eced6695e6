from app.main import health


def test_health_reports_healthy():
    assert health()["status"] == "healthy"

"""Settings: defaults, every bad value named with its variable, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.errors import ConfigError
from workers.settings import KNOWN_VARIABLES, Secret, environment, is_given, load_settings, parse_postgres_url

REPO = Path(__file__).resolve().parent.parent


def test_defaults_need_no_configuration() -> None:
    settings = load_settings({})

    assert settings.broker_url.value == "redis://127.0.0.1:6379/0"
    assert settings.database is None
    assert settings.state_database_url.value.startswith("sqlite:///")
    assert settings.backup.store.startswith("file:///")
    assert str(settings.receiver.bind) == "127.0.0.1:8080"
    assert str(settings.metrics_bind) == "127.0.0.1:9540"
    assert (settings.log_level, settings.log_format) == ("INFO", "json")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OPS_BROKER_URL", "amqp://guest@localhost//", "OPS_BROKER_URL: must be a redis:// URL"),
        ("OPS_DATABASE_URL", "mysql://db/x", "OPS_DATABASE_URL: must start with postgresql://"),
        ("OPS_DATABASE_URL", "postgresql://host:5432/", "OPS_DATABASE_URL: must name a database"),
        ("OPS_STATE_DATABASE_URL", "redis://x", "OPS_STATE_DATABASE_URL: must be sqlite:///PATH or postgresql://"),
        ("OPS_BACKUP_STORE", "ftp://x", "OPS_BACKUP_STORE: must be file://DIR or s3://BUCKET/PREFIX"),
        ("OPS_BACKUP_STORE", "s3://", "OPS_BACKUP_STORE: s3:// must name a bucket"),
        ("OPS_RECEIVER_BIND", "8080", "OPS_RECEIVER_BIND: must be HOST:PORT"),
        ("OPS_METRICS_BIND", "127.0.0.1:99999", "OPS_METRICS_BIND: port must be between 0 and 65535"),
        ("OPS_LOG_LEVEL", "LOUD", "OPS_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("OPS_LOG_FORMAT", "xml", "OPS_LOG_FORMAT: must be one of json, console"),
        ("OPS_BACKUP_KEEP_MIN", "0", "OPS_BACKUP_KEEP_MIN: must be at least 1"),
        ("OPS_BACKUP_RETENTION_DAYS", "thirty", "OPS_BACKUP_RETENTION_DAYS: must be a whole number"),
        ("OPS_BACKUP_DUMP_TIMEOUT_S", "soon", "OPS_BACKUP_DUMP_TIMEOUT_S: must be a number of seconds"),
        ("OPS_SCHEDULE_BACKUP_FULL", "daily", "OPS_SCHEDULE_BACKUP_FULL: must be a crontab expression"),
        ("OPS_SCHEDULE_OPS_CHECK", "hourly", "OPS_SCHEDULE_OPS_CHECK: must be a crontab expression"),
        ("OPS_SCHEDULE_BACKUP_FULL", "61 2 * * *", "OPS_SCHEDULE_BACKUP_FULL: is not a valid crontab expression"),
        ("OPS_SCHEDULE_BACKUP_CLEANUP", "0 3 * * 9", "OPS_SCHEDULE_BACKUP_CLEANUP: is not a valid crontab expression"),
        ("OPS_BACKUP_LOCK_WAIT_TIMEOUT_S", "nan", "OPS_BACKUP_LOCK_WAIT_TIMEOUT_S: must be a finite number"),
        ("OPS_NOTIFY_TIMEOUT_S", "inf", "OPS_NOTIFY_TIMEOUT_S: must be a finite number"),
        ("OPS_RECEIVER_ALLOW_NO_AUTH", "maybe", "OPS_RECEIVER_ALLOW_NO_AUTH: must be one of 1/0"),
        ("OPS_RECEIVER_BASIC_AUTH", "justauser", "OPS_RECEIVER_BASIC_AUTH: must be USER:PASSWORD"),
        ("OPS_RECEIVER_BASIC_AUTH", "user:", "OPS_RECEIVER_BASIC_AUTH: must be USER:PASSWORD, neither part empty"),
        ("OPS_FLOWER_BASIC_AUTH", ":secret", "OPS_FLOWER_BASIC_AUTH: must be USER:PASSWORD, neither part empty"),
        ("OPS_S3_SSE", "rot13", "OPS_S3_SSE: must be one of AES256, aws:kms, none"),
        ("OPS_S3_SSE", "aws:kms", "OPS_S3_KMS_KEY_ID: required when OPS_S3_SSE=aws:kms"),
        ("OPS_TENANT_COLUMN", "org_id; drop table x", "OPS_TENANT_COLUMN: must be a plain column name"),
        ("OPS_TENANT_ID_PATTERN", "([", "OPS_TENANT_ID_PATTERN: is not a valid regular expression"),
        ("OPS_BROKR_URL", "redis://x", "OPS_BROKR_URL: unknown setting (a typo?)"),
        ("OPS_BROKER_URL", "redis://127.0.0.1:abc/0", "OPS_BROKER_URL: has an invalid port"),
        ("OPS_BROKER_URL", "redis://127.0.0.1:99999/0", "OPS_BROKER_URL: has an invalid port"),
        ("OPS_BROKER_URL", "redis://127.0.0.1:6379/abc", "OPS_BROKER_URL: must end in a database number"),
        ("OPS_STATE_DATABASE_URL", "postgresql://u@127.0.0.1:x/state", "OPS_STATE_DATABASE_URL: has an invalid port"),
        ("OPS_STATE_DATABASE_URL", "postgresql://127.0.0.1:5432", "OPS_STATE_DATABASE_URL: must name a database"),
        ("OPS_STATE_DATABASE_URL", "sqlite:///", "OPS_STATE_DATABASE_URL: must name a file"),
        ("OPS_STATE_DATABASE_URL", "sqlite:///:memory:", "OPS_STATE_DATABASE_URL: must name a file"),
        ("OPS_STATE_DATABASE_URL", "sqlite://", "OPS_STATE_DATABASE_URL: must name a file"),
        ("OPS_METRICS_BIND", "127.0.0.1:65535", "OPS_METRICS_BIND: port must be at most 65534"),
    ],
)
def test_each_bad_setting_is_named_with_what_is_wrong(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: value})

    assert any(problem.startswith(message) for problem in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"OPS_LOG_LEVEL": "LOUD", "OPS_METRICS_BIND": "x", "OPS_BACKUP_KEEP_MIN": "-1"})

    assert len(caught.value.problems) == 3


def test_a_password_in_a_bad_url_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"OPS_DATABASE_URL": "mysql://admin:hunter2@db/x", "OPS_RECEIVER_TOKEN": "t0k3n"})

    assert "hunter2" not in str(caught.value)


def test_secrets_do_not_show_in_repr() -> None:
    settings = load_settings(
        {
            "OPS_DATABASE_URL": "postgresql://app:s3cret@db.internal:5433/platform",
            "OPS_RECEIVER_TOKEN": "tok-123",
            "OPS_BROKER_URL": "redis://:brokerpw@redis:6379/0",
        }
    )

    shown = repr(settings)
    assert "s3cret" not in shown and "tok-123" not in shown and "brokerpw" not in shown
    assert repr(Secret("x")) == "Secret('***')"


def test_postgres_url_keeps_the_password_out_of_display_and_in_the_child_environment() -> None:
    target = parse_postgres_url("postgresql://app:p%40ss@db.internal:5433/platform?sslmode=require")

    assert (target.host, target.port, target.user, target.dbname) == ("db.internal", 5433, "app", "platform")
    assert target.redacted() == "postgresql://app:***@db.internal:5433/platform"
    assert target.child_env()["PGPASSWORD"] == "p@ss"
    assert target.child_env()["PGSSLMODE"] == "require"


@pytest.mark.parametrize(
    ("query", "named"),
    [("sslmode=sometimes", "sslmode='sometimes'"), ("sslrootcert=/etc/ca.pem", "PGSSLROOTCERT")],
)
def test_a_postgres_url_option_that_would_be_ignored_or_refused_is_a_setting_error(query: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_postgres_url(f"postgresql://app@db.internal/platform?{query}")


def test_the_readme_settings_table_lists_exactly_the_known_variables() -> None:
    readme = (REPO / "README.md").read_text()
    table_names = {
        line.split("`")[1]
        for line in readme.splitlines()
        if line.startswith("| `OPS_") and line.count("`") >= 2
    }

    assert table_names == set(KNOWN_VARIABLES)


def test_a_var_dir_that_is_a_file_is_a_setting_error(tmp_path: Path) -> None:
    (tmp_path / "var").write_text("not a directory")
    with pytest.raises(ConfigError) as raised:
        load_settings({"OPS_VAR_DIR": str(tmp_path / "var")})
    assert any(p.startswith("OPS_VAR_DIR:") and "is not a directory" in p for p in raised.value.problems)


def test_an_env_file_that_is_not_utf8_is_a_setting_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_bytes(b"OPS_LOG_LEVEL=DEBUG\nOPS_RECEIVER_TOKEN=caf\xe9\n")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as raised:
        environment()

    assert raised.value.problems[0].startswith(".env: not UTF-8 text")


def test_an_unparseable_env_file_line_is_a_setting_error_that_never_shows_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("OPS_LOG_LEVEL=DEBUG\nOPS_RECEIVER_TOKEN secret-value-here\n")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as raised:
        environment()

    assert raised.value.problems == (".env line 2: cannot be parsed (expected NAME=value)",)
    assert "secret-value-here" not in str(raised.value)


def test_is_given_tells_a_value_from_the_environment_or_env_file_from_a_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("OPS_BROKER_URL=redis://from-env-file:6379/0\nOPS_LOG_LEVEL=\n")
    monkeypatch.chdir(tmp_path)
    for name in ("OPS_BROKER_URL", "OPS_LOG_LEVEL", "OPS_METRICS_BIND", "OPS_RECEIVER_BIND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPS_RECEIVER_BIND", "127.0.0.1:8081")

    assert is_given("OPS_BROKER_URL")  # .env
    assert is_given("OPS_RECEIVER_BIND")  # environment
    assert not is_given("OPS_LOG_LEVEL")  # empty: the default applies
    assert not is_given("OPS_METRICS_BIND")  # nowhere

"""Every setting with a kind (a number, a port, one of a few words, on/off) is checked when the settings load: a
typo stops the start with the setting's name, never a traceback or a value the operator did not mean."""
import pytest

from common.runtime.config import ConfigurationError, load_settings


@pytest.mark.parametrize(("key", "value"), [
    ("GATEWAY_PORT", "80a"), ("ORDER_SVC_ADMIN_PORT", "-1"), ("BATCH_SIZE", "many"), ("BATCH_SIZE", "0"),
    ("WAIT_POOL_SIZE", "+5"), ("ENTRIES_PER_MESSAGE", "0"), ("BATCH_SIZE", " 7"),
    ("POLL_INTERVAL", "-1"), ("POLL_INTERVAL", "nan"), ("RESEND_DELAY", "5s"), ("MAX_BODY_BYTES", "1e6"),
    ("FAST_PATH", "disabled"), ("TRUSTED_PROXY", "maybe"), ("LOG_FORMAT", "xml"), ("LOG_LEVEL", "loud"),
    ("EVENT_LOOP", "trio"), ("QUEUE_TYPE", "stream"), ("DB_STATEMENT_TIMEOUT", "soon"),
])
def test_a_value_of_the_wrong_kind_stops_the_start_naming_the_setting(key, value):
    with pytest.raises(ConfigurationError, match=key):
        load_settings({key: value})


@pytest.mark.parametrize(("value", "on"), [("1", True), ("true", True), ("Yes", True), ("on", True),
                                           ("0", False), ("false", False), ("NO", False), ("off", False),
                                           ("", False)])
def test_a_flag_takes_the_usual_words_for_on_and_off(value, on):
    assert load_settings({"FAST_PATH": value}).fast_path is on


def test_kinds_are_read_as_their_kind():
    settings = load_settings({"LOG_LEVEL": "debug", "POLL_INTERVAL": "0.25", "BATCH_SIZE": "7",
                              "QUEUE_TYPE": "classic"})
    assert (settings.log_level, settings.poll_interval, settings.batch_size, settings.queue_type) == \
        ("DEBUG", 0.25, 7, "classic")

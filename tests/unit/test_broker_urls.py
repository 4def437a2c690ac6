"""COEXIST_BROKER_URL naming a cluster's nodes: parsed once, bad input named in one line,
every node handed to pika, every password hidden."""

from __future__ import annotations

import pytest

from bus.brokers import make_broker, split_broker_urls
from workers.config import ConfigError, Settings, redact_url
from workers.observe.broker import _amqp_credentials, management_url

NODES = ("amqp://coexist:s3cret@mq1:5672/prod,amqp://coexist:s3cret@mq2:5673/prod,"
         "amqp://coexist:s3cret@mq3:5674/prod")


def test_one_url_is_one_node():
    assert split_broker_urls("amqp://guest:guest@127.0.0.1:5672/%2F") == [
        "amqp://guest:guest@127.0.0.1:5672/%2F"]


def test_a_cluster_is_its_nodes_comma_separated_or_as_dramatiq_writes_them():
    assert split_broker_urls(NODES) == NODES.split(",")
    assert split_broker_urls(NODES.replace(",", " ; ")) == NODES.split(",")


@pytest.mark.parametrize("url, message", [
    ("amqp://mq1/prod,", "node 2 of 2 is empty (a stray comma?)"),
    ("amqp://mq1/prod,redis://mq2/prod", "node 2 of 2 must start with amqp:// or amqps://, "
                                         "got 'redis'"),
    ("mq1:5672", "must start with amqp:// or amqps://"),
    ("amqp:///prod", "names no host"),
    ("amqp://mq1:56x2/prod", "has a bad host or port"),
    ("amqp://u:pw@mq1/prod,amqp://u:pw@mq2/test", "node 2 of 2 names another vhost than "
                                                  "node 1 ('test' vs 'prod')"),
    ("amqp://u:pw@mq1/,amqp://v:pw@mq2/", "node 2 of 2 names another user than node 1"),
])
def test_a_bad_node_is_named(url, message):
    with pytest.raises(ValueError) as err:
        split_broker_urls(url)
    assert message in str(err.value)
    assert "pw" not in str(err.value)


def test_the_broker_gets_every_node_in_an_order_of_its_own():
    broker = make_broker(NODES, queue_type="quorum")
    ports = sorted(p.port for p in broker.parameters)
    assert ports == [5672, 5673, 5674]
    assert {p.virtual_host for p in broker.parameters} == {"prod"}
    orders = {tuple(p.port for p in make_broker(NODES).parameters) for _ in range(30)}
    assert len(orders) > 1  # processes spread their connections over the nodes


def test_one_url_stays_one_set_of_parameters():
    broker = make_broker("amqp://guest:guest@127.0.0.1:5672/%2F")
    assert broker.parameters.port == 5672


def test_a_bad_cluster_setting_is_one_line_naming_the_variable_and_the_node():
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"COEXIST_HOME": "/nonexistent",
                           "COEXIST_BROKER_URL": "amqp://u:hunter2@mq1/p,,amqp://mq3/p"})
    text = str(err.value)
    assert "COEXIST_BROKER_URL=" in text and "node 2 of 3 is empty" in text
    assert "\n" not in text and "hunter2" not in text


def test_every_password_of_a_cluster_is_hidden_where_urls_are_shown():
    shown = redact_url(NODES)
    assert "s3cret" not in shown and shown.count("coexist:***@") == 3


def test_status_reads_the_management_api_and_credentials_of_the_first_node():
    s = Settings(home="/nonexistent", broker_url=NODES)
    assert management_url(s) == "http://mq1:15672"
    assert _amqp_credentials(NODES) == ("coexist", "s3cret", "prod")

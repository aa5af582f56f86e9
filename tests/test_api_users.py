"""The ClickHouse accounts compose/clickhouse/users.d gives Grafana and the API: read-only,
bounded, and allowed to read the waxflow database only. No ClickHouse server runs in the tests,
so this checks the files against what the server would enforce (see docs/limitations.md);
the grants' text is checked with ClickHouse's own parser (chDB)."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from connectors import clickhouse
from flows.settings import API

USERS_D = Path(__file__).resolve().parents[1] / "compose" / "clickhouse" / "users.d"
DATABASE = yaml.safe_load((USERS_D.parents[1] / "dataflows.yaml").read_text())["clickhouse"]["database"]


@pytest.mark.parametrize("file, user, max_time", [("grafana.xml", "grafana", 120), ("waxflow-api.xml", "waxflow_api", 60)])
def test_account_is_read_only_bounded_and_limited_to_the_database(store, file, user, max_time) -> None:
    root = ElementTree.parse(USERS_D / file).getroot()
    account = root.find(f"users/{user}")
    profile = root.find(f"profiles/{account.find('profile').text}")
    assert profile.find("readonly").text in ("1", "2")
    constraints = profile.find("constraints")
    assert constraints.find("readonly/min").text == "1"  # never back to 0 (writes)
    for setting in ("max_execution_time", "max_memory_usage"):
        # 0 means no limit: the minimum keeps the limit from being lifted, the maximum from being raised
        assert int(constraints.find(f"{setting}/min").text) >= 1
        assert int(constraints.find(f"{setting}/max").text) == int(profile.find(setting).text)
    assert int(profile.find("max_execution_time").text) == max_time
    grants = [q.text for q in account.findall("grants/query")]
    assert grants == [f"GRANT SELECT, dictGet ON {DATABASE}.*"]
    # each grant is one ClickHouse GRANT statement once a grantee is named
    client = clickhouse.connect(store)
    for grant in grants:
        ast = [row[0] for row in client.query(f"EXPLAIN AST {grant} TO nobody").result_rows]
        assert ast[0].startswith("GrantQuery") or ast[0].startswith("ASTGrantQuery"), ast


def test_api_dsn_must_be_a_server() -> None:
    assert API(dsn="http://waxflow_api:secret@clickhouse:8123").dsn.startswith("http://")
    with pytest.raises(ValueError, match="http"):
        API(dsn="chdb:data/clickhouse")

-- Kerbside hub store, version 3: the on-demand fetch budget, shared by every hub on the
-- database (hub/src/fetch_budget.rs has the rule). Without it each hub counted on its own, so a
-- unit or a staff member spreading fetches over several hubs had several budgets.

-- Distinct patients each unit (who = 0) and staff member (who = 1) fetched: `at` is when the
-- patient was counted; rows older than the window (an hour) no longer count and are deleted.
CREATE TABLE fetch_seen (
    who smallint NOT NULL,
    key text COLLATE "C" NOT NULL,
    nhs text COLLATE "C" NOT NULL,
    at bigint NOT NULL,
    PRIMARY KEY (who, key, nhs)
);
CREATE INDEX fetch_seen_window ON fetch_seen (who, key, at);
CREATE INDEX fetch_seen_at ON fetch_seen (at);

-- When each kind of budget alert (0 over budget, 1 ceiling) was last raised for a unit or a
-- staff member, so that hubs raise it at most once per ten minutes between them.
CREATE TABLE fetch_alerted (
    who smallint NOT NULL,
    key text COLLATE "C" NOT NULL,
    kind smallint NOT NULL,
    at bigint NOT NULL,
    PRIMARY KEY (who, key, kind)
);

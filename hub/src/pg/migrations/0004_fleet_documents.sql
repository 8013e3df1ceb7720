-- Kerbside hub store, version 4: the fleet documents every hub decides on — the CRL, the
-- signed token deny list and the fleet inventory — held once in the database, so that hubs
-- sharing it decide alike (hub/src/fleet_docs.rs). Each comes from the CA custodian's fleet
-- directory as a file; a hub that sees a valid file newer than the database's copy writes it
-- here, and every hub uses the copy here, never its own file.

-- One row per document: `kind` is 'crl', 'denylist' or 'inventory'; `version` is the CRL's
-- number, the deny list's version or the inventory's revision (each only ever increases), so a
-- hub holding an older file can never replace a newer copy.
CREATE TABLE fleet_document (
    kind text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    body bytea NOT NULL,
    sha256 bytea NOT NULL,
    stored_at bigint NOT NULL,
    stored_by text NOT NULL
);

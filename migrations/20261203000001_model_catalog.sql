-- Model families and the model catalog.
--
-- The design document kept the catalog in a Python dict; here it is data, so operators can
-- add worker types without a redeploy. A model number is DMN-<family>-<generation>, and the
-- catalog maps a worker_type (what a worker sends at registration) to one.

CREATE TABLE model_families (
    code        text PRIMARY KEY
                CONSTRAINT model_families_code_format CHECK (code ~ '^[A-Z]{2}$'),
    name        text NOT NULL
                CONSTRAINT model_families_name_length CHECK (char_length(name) BETWEEN 1 AND 64),
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE model_families IS 'Worker families: the XX of a DMN-XX-YY model number.';

CREATE TABLE model_catalog (
    worker_type  text PRIMARY KEY
                 CONSTRAINT model_catalog_worker_type_format
                 CHECK (worker_type ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    family       text NOT NULL REFERENCES model_families (code),
    generation   smallint NOT NULL
                 CONSTRAINT model_catalog_generation_range CHECK (generation BETWEEN 1 AND 99),
    model_number text GENERATED ALWAYS AS
                 ('DMN-' || family || '-' || lpad(generation::text, 2, '0')) STORED,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE model_catalog IS 'worker_type -> model number (DMN-XX-YY), as served by GET /api/workers/models/catalog.';

INSERT INTO model_families (code, name, description) VALUES
    ('TM', 'TrueMark', 'NFT Minting Workers'),
    ('RG', 'Regent',   'Timeline/Greeter Workers'),
    ('GT', 'GOAT',     'Teaching System Workers'),
    ('SK', 'SKG',      'Knowledge Graph Workers'),
    ('BB', 'Bubble',   'Host Bubble Workers'),
    ('GN', 'Generic',  'Experimental/Unknown');

INSERT INTO model_catalog (worker_type, family, generation, description) VALUES
    ('truemark',    'TM', 1, 'TrueMark NFT minting worker'),
    ('truemark-v2', 'TM', 2, 'TrueMark, major upgrade'),
    ('regent',      'RG', 1, 'Regent timeline/greeter worker'),
    ('regent-pro',  'RG', 2, 'Regent, major upgrade'),
    ('goat',        'GT', 1, 'GOAT teaching system worker'),
    ('skg',         'SK', 1, 'SKG knowledge graph worker'),
    ('bubble',      'BB', 1, 'Host bubble worker'),
    ('generic',     'GN', 1, 'Experimental or unknown worker type');

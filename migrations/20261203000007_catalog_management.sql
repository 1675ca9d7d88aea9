-- Catalog management over HTTP (POST/PATCH/DELETE /api/workers/models/catalog): the rules the
-- API checks are kept here too, so no other writer can break them.

-- Descriptions and family names are shown in one table cell by `dals catalog list`: one line,
-- bounded.
ALTER TABLE model_catalog
    ADD CONSTRAINT model_catalog_description_rule
    CHECK (char_length(description) <= 256 AND description !~ '[[:cntrl:]]');

ALTER TABLE model_families
    ADD CONSTRAINT model_families_name_text CHECK (name !~ '[[:cntrl:]]'),
    ADD CONSTRAINT model_families_description_rule
    CHECK (char_length(description) <= 256 AND description !~ '[[:cntrl:]]');

-- Unknown worker types register as `generic` (DMN-GN-..), so that entry stays in the Generic
-- family ...
ALTER TABLE model_catalog
    ADD CONSTRAINT model_catalog_generic_is_gn CHECK (worker_type <> 'generic' OR family = 'GN');

-- ... and is never deleted or renamed.
CREATE FUNCTION keep_generic_catalog_entry() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.worker_type = 'generic' AND (TG_OP = 'DELETE' OR NEW.worker_type <> 'generic') THEN
        RAISE EXCEPTION 'the generic catalog entry is where unknown worker types register; it cannot be removed'
            USING ERRCODE = 'restrict_violation', CONSTRAINT = 'model_catalog_generic_kept';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$;

CREATE TRIGGER model_catalog_generic_kept
    BEFORE DELETE OR UPDATE OF worker_type ON model_catalog
    FOR EACH ROW EXECUTE FUNCTION keep_generic_catalog_entry();

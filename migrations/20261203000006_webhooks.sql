-- Webhooks: endpoints that receive worker transitions, and the outbox that delivers them.
--
-- A transition is a row in worker_events. A trigger on that table writes one delivery per
-- subscribed endpoint into the outbox (webhook_deliveries) in the very transaction of the
-- transition, whatever code path wrote it: a transition that committed has its deliveries
-- committed too, and a registry that crashes before sending leaves them for any replica.
-- The payload is stored as the exact bytes that are signed and sent.

CREATE TABLE webhook_endpoints (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url         text NOT NULL
                CONSTRAINT webhook_endpoints_url_rule
                CHECK (char_length(url) <= 2048 AND url ~* '^https?://[^/?#[:space:]]+'
                       AND url !~ '[[:cntrl:]]'),
    -- The HMAC key of the signatures; never shown again after creation.
    secret      text NOT NULL
                CONSTRAINT webhook_endpoints_secret_rule
                CHECK (char_length(secret) BETWEEN 16 AND 256 AND secret !~ '[[:cntrl:]]'),
    -- The worker_events kinds delivered to this endpoint.
    events      text[] NOT NULL
                CONSTRAINT webhook_endpoints_events_known
                CHECK (cardinality(events) >= 1
                       AND array_position(events, NULL) IS NULL
                       AND events <@ ARRAY['registered', 're_registered', 'first_heartbeat',
                                           'stale', 'offline', 'recovered', 'deregistered',
                                           'brake_held', 'brake_released']::text[]),
    enabled     boolean NOT NULL DEFAULT true,
    description text NOT NULL DEFAULT ''
                CONSTRAINT webhook_endpoints_description_length
                CHECK (char_length(description) <= 1024),
    -- api: POST /api/webhooks; settings: [[webhooks.endpoints]] of the settings file.
    source      text NOT NULL DEFAULT 'api'
                CONSTRAINT webhook_endpoints_source_known CHECK (source IN ('api', 'settings')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Endpoints of the settings file are upserted by URL at start-up.
CREATE UNIQUE INDEX webhook_endpoints_settings_url
    ON webhook_endpoints (url) WHERE source = 'settings';

COMMENT ON TABLE webhook_endpoints IS 'Where worker transitions are POSTed, signed with the endpoint''s secret.';

CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Deleting an endpoint drops its outbox: an operator who removes it wants no more sends.
    endpoint_id     bigint NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        bigint NOT NULL REFERENCES worker_events (id) ON DELETE CASCADE,
    kind            text NOT NULL,
    -- The exact request body: what is signed, sent, and shown.
    payload         text NOT NULL
                    CONSTRAINT webhook_deliveries_payload_object
                    CHECK (jsonb_typeof(payload::jsonb) = 'object'),
    status          text NOT NULL DEFAULT 'pending'
                    CONSTRAINT webhook_deliveries_status_known
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- When a pending delivery is next due (backoff after a failed attempt).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A replica's claim while it sends; a claim that outlives this time (the replica died
    -- mid-delivery) is void, and the delivery is due again.
    locked_until    timestamptz,
    locked_by       text,
    delivered_at    timestamptz,
    -- The last attempt's HTTP status (none when it did not get an answer) and error.
    last_status     integer CHECK (last_status BETWEEN 100 AND 999),
    last_error      text,
    CONSTRAINT webhook_deliveries_once_per_endpoint UNIQUE (endpoint_id, event_id),
    CONSTRAINT webhook_deliveries_delivered_time
        CHECK ((status = 'delivered') = (delivered_at IS NOT NULL)),
    CONSTRAINT webhook_deliveries_settled_attempted
        CHECK (status = 'pending' OR attempts >= 1),
    CONSTRAINT webhook_deliveries_claim_pending
        CHECK ((locked_until IS NULL) = (locked_by IS NULL)
               AND (status = 'pending' OR locked_until IS NULL))
);

-- The delivery task's scan: pending deliveries by when they are due.
CREATE INDEX webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);

COMMENT ON TABLE webhook_deliveries IS 'The webhook outbox: one row per (endpoint, event), written in the transaction of the event.';

CREATE TABLE webhook_attempts (
    delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL CHECK (attempt >= 1),
    -- When the request was sent (database clock, taken at the claim).
    at          timestamptz NOT NULL,
    duration_ms integer NOT NULL CHECK (duration_ms >= 0),
    http_status integer CHECK (http_status BETWEEN 100 AND 999),
    error       text,
    PRIMARY KEY (delivery_id, attempt),
    -- An attempt either got an answer or failed before one.
    CONSTRAINT webhook_attempts_outcome CHECK (http_status IS NOT NULL OR error IS NOT NULL)
);

COMMENT ON TABLE webhook_attempts IS 'Every attempt to deliver a webhook: when, how long, and what came back.';

-- Writes the outbox rows of one event. A deferred constraint trigger runs at commit, so the
-- payload sees the whole transaction (a restart command queued after the event included),
-- and the rows still commit or roll back with the event.
CREATE FUNCTION enqueue_webhook_deliveries() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    restart_queued boolean := false;
    body text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints
                   WHERE enabled AND NEW.kind = ANY (events)) THEN
        RETURN NULL;
    END IF;
    -- Operator commands may be absent from this database's schema; look them up only if not.
    IF NEW.serial_number IS NOT NULL AND to_regclass('worker_commands') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM worker_commands
                                WHERE serial_number = $1 AND command = ''restart''
                                  AND status IN (''pending'', ''delivered''))'
            INTO restart_queued USING NEW.serial_number;
    END IF;
    SELECT jsonb_build_object(
               'event_id', NEW.id,
               'kind', NEW.kind,
               'worker_name', NEW.worker_name,
               'serial_number', NEW.serial_number,
               'from_status', NEW.from_status,
               'to_status', NEW.to_status,
               'reason', NEW.reason,
               'at', to_char(NEW.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
               'model_number', d.model_number,
               'worker_type', d.worker_type,
               'api_url', d.api_url,
               'user_id', d.user_id,
               'metadata', d.metadata,
               'restart_queued', restart_queued)::text
    INTO body
    FROM (SELECT 1) one
    LEFT JOIN deployments d ON d.serial_number = NEW.serial_number;

    INSERT INTO webhook_deliveries (endpoint_id, event_id, kind, payload)
    SELECT e.id, NEW.id, NEW.kind, body
    FROM webhook_endpoints e
    WHERE e.enabled AND NEW.kind = ANY (e.events)
    ORDER BY e.id;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER worker_events_enqueue_webhooks
    AFTER INSERT ON worker_events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION enqueue_webhook_deliveries();

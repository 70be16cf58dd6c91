-- The learned strategy (`ml`): two more features, computed by the same code
-- (`nb_strategy::ml::feature_row`) as the rows the proxy sends the model server, and what
-- decided each request.
--
-- f_failure_rate    share of recent attempts at the backend that failed (EWMA over attempts,
--                   decayed to the decision), 0..1: the model's `failure_rate` feature
-- f_latency_rif_ms  recent cost of attempts sent at the backend's level of requests in flight
--                   when it was chosen (failures at the penalty), ms; null while no level has
--                   samples (the model's `latency_rif_ms` reads it as 0)
-- ml_decided        null when the pool's strategy is not `ml`; true when the model's scores
--                   chose the backend, false when the pool's fallback strategy did
-- ml_fallback       why the fallback decided: model_server_error, timeout, stale_scores,
--                   circuit_open or no_scores
--
-- `predicted_latency_us` (since 0001) is now filled when the model chose. The columns are added
-- at the end of the training view, which the JSONL request log mirrors column for column.
-- One column per statement: TimescaleDB adds columns to a compressed hypertable one at a time.
ALTER TABLE requests ADD COLUMN f_failure_rate real;
ALTER TABLE requests ADD COLUMN f_latency_rif_ms real;
ALTER TABLE requests ADD COLUMN ml_decided boolean;
ALTER TABLE requests ADD COLUMN ml_fallback text;

CREATE OR REPLACE VIEW training_requests AS
SELECT time, request_id, trace_id, pool, route, backend, backend_address, method, status, error,
       latency_us, upstream_latency_us, request_bytes, response_bytes, retries, strategy,
       f_inflight, f_latency_ewma_ms, f_error_rate, f_weight, f_since_success_ms,
       f_reported_cpu, f_reported_queue, f_reported_rps, predicted_latency_us, client_addr,
       f_failure_rate, f_latency_rif_ms, ml_decided, ml_fallback
FROM requests
WHERE backend IS NOT NULL;

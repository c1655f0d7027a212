//! A scrape of `GET /metrics`, parsed with a real Prometheus text-format parser.
#![allow(dead_code)]

use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use reqwest::Client;

use super::server::get_text;

pub type Scrape = MetricsExposition<PrometheusType, PrometheusValue>;

pub async fn scrape(http: &Client, base: &str) -> Scrape {
    let text = get_text(http, format!("{base}/metrics")).await;
    parse_prometheus(&text).expect("valid Prometheus exposition format")
}

/// Label values of every sample of `metric`.
pub fn samples(s: &Scrape, metric: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let Some(family) = s.families.get(metric) else {
        return Vec::new();
    };
    family
        .iter_samples()
        .map(|x| {
            let labels = x.get_labelset().expect("labels");
            let pairs = family
                .get_label_names()
                .iter()
                .filter_map(|n| Some((n.to_string(), labels.get_label_value(n)?.to_string())))
                .collect();
            let v = match &x.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(v) | PrometheusValue::Unknown(v) => v.as_f64(),
                PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
                PrometheusValue::Summary(s) => s.count.unwrap_or(0) as f64,
            };
            (pairs, v)
        })
        .collect()
}

/// The value of the sample of `metric` whose labels include all of `labels`.
pub fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(s, metric)
        .into_iter()
        .find(|(pairs, _)| {
            labels
                .iter()
                .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v))
        })
        .unwrap_or_else(|| panic!("no {metric} {labels:?}"))
        .1
}

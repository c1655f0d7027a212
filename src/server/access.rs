//! Who may call which route: each route declares what it needs of the caller's token where
//! it is registered ([`Routes::add`]), and the authorization middleware looks the
//! declaration up. A route registered without one is refused, never allowed.

use std::collections::HashMap;

use axum::http::Method;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::api::ErrorCode;
use crate::auth::Permission;

/// What a route needs of the caller's token (when the server has tokens; a route listed in
/// `open_routes` needs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any valid token (operations routes; the topic list, which shows each token the
    /// topics it holds a permission on).
    AnyToken,
    /// The permission on the topic named in the path (`{topic}`).
    Topic(Permission),
    /// The permission on at least one topic; the handler checks the topics the request
    /// names in its body (topic creation, group offsets).
    Holds(Permission),
}

/// The declarations: route template, then method: the access, and the errors the route
/// answers with besides those of every route.
#[derive(Debug, Default, Clone)]
pub struct AccessTable(HashMap<String, HashMap<Method, Declaration>>);

#[derive(Debug, Clone, Copy)]
struct Declaration {
    access: Access,
    errors: &'static [ErrorCode],
}

/// The errors any route may answer with: no valid token, no permission, no answer in time,
/// a failure inside.
pub const EVERY_ROUTE_ERRORS: &[ErrorCode] = &[
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::RequestTimedOut,
    ErrorCode::InternalError,
];

/// What the table says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// The route declared this.
    Access(Access),
    /// The path is a route, but not with this method: the router answers 405.
    OtherMethod,
    /// A route nobody declared access for: refused.
    Undeclared,
}

impl AccessTable {
    /// The declaration for `method` on the route template `route`.
    pub fn lookup(&self, method: &Method, route: &str) -> Declared {
        match self.0.get(route) {
            None => Declared::Undeclared,
            Some(methods) => match methods.get(method) {
                Some(d) => Declared::Access(d.access),
                None if *method == Method::HEAD => methods
                    .get(&Method::GET)
                    .map_or(Declared::OtherMethod, |d| Declared::Access(d.access)),
                None => Declared::OtherMethod,
            },
        }
    }

    /// Adds each operation's error responses to `api`: one per status, listing the codes
    /// it may carry, from the route's declaration and [`EVERY_ROUTE_ERRORS`].
    pub fn document_errors(&self, api: &mut utoipa::openapi::OpenApi) {
        use std::collections::BTreeMap;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        for (path, item) in api.paths.paths.iter_mut() {
            let Some(methods) = self.0.get(path) else {
                continue;
            };
            for (method, op) in [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::PUT, &mut item.put),
                (Method::DELETE, &mut item.delete),
                (Method::PATCH, &mut item.patch),
            ] {
                let (Some(op), Some(d)) = (op.as_mut(), methods.get(&method)) else {
                    continue;
                };
                let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
                for &code in d.errors.iter().chain(EVERY_ROUTE_ERRORS) {
                    let codes = by_status.entry(code.status()).or_default();
                    if !codes.contains(&code) {
                        codes.push(code);
                    }
                }
                for (status, codes) in by_status {
                    let description = codes
                        .iter()
                        .map(|c| format!("`{}`: {}", c.as_str(), c.description()))
                        .collect::<Vec<_>>()
                        .join("; ");
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                                .build(),
                        )
                        .build();
                    // A status the handler documents itself (readiness) keeps its own body.
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(RefOr::T(response));
                }
            }
        }
    }
}

/// The router being built, with the access each route declares.
pub struct Routes<S> {
    router: OpenApiRouter<S>,
    table: AccessTable,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new(router: OpenApiRouter<S>) -> Self {
        Routes {
            router,
            table: AccessTable::default(),
        }
    }

    /// Registers the handlers of `routes` (one path; `utoipa_axum::routes!`) with the access
    /// every method of it needs and the errors it answers with (besides those of every
    /// route), which the OpenAPI document lists.
    pub fn add(
        mut self,
        access: Access,
        errors: &'static [ErrorCode],
        routes: UtoipaMethodRouter<S>,
    ) -> Self {
        for (path, item) in &routes.1.paths {
            let methods = self.table.0.entry(path.clone()).or_default();
            for (method, op) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ] {
                if op.is_some() {
                    methods.insert(method, Declaration { access, errors });
                }
            }
        }
        self.router = self.router.routes(routes);
        self
    }

    pub fn into_parts(self) -> (OpenApiRouter<S>, AccessTable) {
        (self.router, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_routes_are_found_and_undeclared_ones_refused() {
        let mut t = AccessTable::default();
        t.0.entry("/v1/topics/{topic}".into()).or_default().insert(
            Method::GET,
            Declaration {
                access: Access::Topic(Permission::Consume),
                errors: &[],
            },
        );
        assert_eq!(
            t.lookup(&Method::GET, "/v1/topics/{topic}"),
            Declared::Access(Access::Topic(Permission::Consume))
        );
        assert_eq!(
            t.lookup(&Method::HEAD, "/v1/topics/{topic}"),
            Declared::Access(Access::Topic(Permission::Consume))
        );
        assert_eq!(
            t.lookup(&Method::POST, "/v1/topics/{topic}"),
            Declared::OtherMethod
        );
        assert_eq!(t.lookup(&Method::GET, "/v1/secret"), Declared::Undeclared);
    }
}

//! Who may call which route: each route declares what it needs of the caller's token where
//! it is registered ([`Routes::add`]), and the authorization middleware looks the
//! declaration up. A route registered without one is refused, never allowed.

use std::collections::HashMap;

use axum::http::Method;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

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

/// The declarations: route template, then method.
#[derive(Debug, Default, Clone)]
pub struct AccessTable(HashMap<String, HashMap<Method, Access>>);

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
                Some(a) => Declared::Access(*a),
                None if *method == Method::HEAD => methods
                    .get(&Method::GET)
                    .map_or(Declared::OtherMethod, |a| Declared::Access(*a)),
                None => Declared::OtherMethod,
            },
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
    /// every method of it needs.
    pub fn add(mut self, access: Access, routes: UtoipaMethodRouter<S>) -> Self {
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
                    methods.insert(method, access);
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
        t.0.entry("/v1/topics/{topic}".into())
            .or_default()
            .insert(Method::GET, Access::Topic(Permission::Consume));
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

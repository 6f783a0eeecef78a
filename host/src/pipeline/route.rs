//! Where a stage's outputs go: to the next stage, to the default output
//! topic, or to the topic of a named route.

use std::collections::HashMap;
use std::sync::Arc;

/// Where an output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The next stage (an output without a route, from any stage but the
    /// last).
    Next,
    /// A topic.
    Topic(Arc<str>),
}

/// The outputs' topics of a chain.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Where an output without a route goes after the last stage.
    pub output: Arc<str>,
    /// Route name -> topic, from `[routes]`.
    pub named: HashMap<String, Arc<str>>,
    /// Whether a route missing from `named` goes to the topic of its name
    /// (`sluice test` of a single plugin) instead of being refused.
    pub open: bool,
}

impl Routes {
    /// Where an output with `route` goes, from a stage that is or is not
    /// the last; `Err` with the reason when the route is not declared.
    pub fn destination(&self, route: Option<&str>, last_stage: bool) -> Result<Destination, String> {
        match route {
            None if !last_stage => Ok(Destination::Next),
            None => Ok(Destination::Topic(self.output.clone())),
            Some(route) => match self.named.get(route) {
                Some(topic) => Ok(Destination::Topic(topic.clone())),
                None if self.open => Ok(Destination::Topic(Arc::from(route))),
                None => Err(format!("route `{route}` is not declared in [routes]")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(open: bool) -> Routes {
        let named = HashMap::from([("vip".to_string(), Arc::from("orders.vip"))]);
        Routes { output: Arc::from("orders.enriched"), named, open }
    }

    fn topic(name: &str) -> Result<Destination, String> {
        Ok(Destination::Topic(Arc::from(name)))
    }

    #[test]
    fn an_output_without_a_route_feeds_the_next_stage_then_the_output_topic() {
        assert_eq!(routes(false).destination(None, false), Ok(Destination::Next));
        assert_eq!(routes(false).destination(None, true), topic("orders.enriched"));
    }

    #[test]
    fn a_named_route_goes_to_its_topic_from_any_stage() {
        assert_eq!(routes(false).destination(Some("vip"), false), topic("orders.vip"));
        assert_eq!(routes(false).destination(Some("vip"), true), topic("orders.vip"));
    }

    #[test]
    fn an_undeclared_route_is_refused_unless_routes_are_open() {
        assert_eq!(
            routes(false).destination(Some("nope"), true),
            Err("route `nope` is not declared in [routes]".into())
        );
        assert_eq!(routes(true).destination(Some("nope"), false), topic("nope"));
    }
}

//! Where a stage's outputs go: to the next stage, or to the default output
//! or a named route: a topic, PostgreSQL tables, or both.

use crate::config::OutputConfig;
use std::collections::HashMap;
use std::sync::Arc;

/// Where an output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The next stage (an output without a route, from any stage but the
    /// last).
    Next,
    /// The default output or a named route.
    Out(Target),
}

/// The topic and tables of the default output or of a named route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The topic the output is produced to, if any.
    pub topic: Option<Arc<str>>,
    /// The tables (`[tables.NAME]` names) it becomes a row of.
    pub tables: Arc<[Arc<str>]>,
}

impl Target {
    /// The target of an `[output]` or `[routes.NAME]` entry.
    pub fn of(config: &OutputConfig) -> Self {
        Self {
            topic: config.topic.as_deref().map(Arc::from),
            tables: config.tables.iter().map(|t| Arc::from(t.as_str())).collect(),
        }
    }

    /// A topic and no table.
    pub fn topic(topic: &str) -> Self {
        Self { topic: Some(Arc::from(topic)), tables: Arc::new([]) }
    }
}

/// The outputs' destinations of a chain.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Where an output without a route goes after the last stage.
    pub output: Target,
    /// Route name -> target, from `[routes]`.
    pub named: HashMap<String, Target>,
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
            None => Ok(Destination::Out(self.output.clone())),
            Some(route) => match self.named.get(route) {
                Some(target) => Ok(Destination::Out(target.clone())),
                None if self.open => Ok(Destination::Out(Target::topic(route))),
                None => Err(format!("route `{route}` is not declared in [routes]")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(open: bool) -> Routes {
        let named = HashMap::from([("vip".to_string(), Target::topic("orders.vip"))]);
        Routes { output: Target::topic("orders.enriched"), named, open }
    }

    fn topic(name: &str) -> Result<Destination, String> {
        Ok(Destination::Out(Target::topic(name)))
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

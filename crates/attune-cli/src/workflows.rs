//! Workflows and inquiries on the command line: `attune execution tree`, `attune inquiry
//! list|respond`, and what `attune run --wait` shows while a workflow runs.

use std::collections::BTreeSet;

use attune_core::{Execution, ExecutionStatus, Runtime, Timestamp};
use clap::Subcommand;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    cmds::{parse_params, usage},
    output::{ago, print, Table},
    Ctx,
};

#[derive(Subcommand)]
pub enum InquiryCmd {
    /// Inquiries waiting for a response (from workflows' `core.ask` tasks), newest first.
    List,
    /// Answer an inquiry: key=value pairs (values that parse as JSON are used as JSON), or
    /// --json. The answer must match the inquiry's schema; it becomes the task's result().
    Respond {
        id: String,
        values: Vec<String>,
        /// The whole answer as one JSON object (merged under key=value ones).
        #[arg(long)]
        json: Option<String>,
    },
}

pub async fn inquiry(ctx: &Ctx, c: InquiryCmd) -> anyhow::Result<i32> {
    match c {
        InquiryCmd::List => {
            let list = ctx.client.list_inquiries().await?;
            let now = Timestamp::now().millis();
            print(ctx.output, &list, || {
                let mut t = Table::new(vec!["ID", "STATUS", "ASKED", "WORKFLOW", "PROMPT", "EXPECTS"]);
                for e in &list.items {
                    t.row(vec![
                        e.id.to_string(),
                        e.status.to_string(),
                        ago(now - e.created_at.millis()),
                        e.parent.map(|p| p.to_string()).unwrap_or_default(),
                        e.parameters.get("prompt").and_then(Value::as_str).unwrap_or("").to_owned(),
                        expects(&e.parameters),
                    ]);
                }
                t
            })?;
        }
        InquiryCmd::Respond { id, values, json } => {
            let id: Uuid = id.parse().map_err(|_| usage(format!("{id:?} is not an inquiry id (a UUID)")))?;
            if values.is_empty() && json.is_none() {
                return Err(usage("give the answer as key=value pairs (e.g. ok=true) or --json '{…}'"));
            }
            let response = parse_params(&values, json.as_deref())?;
            let e = ctx.client.respond_inquiry(id, response).await?;
            print(ctx.output, &e, || {
                Table::fields(vec![
                    ("inquiry", e.id.to_string()),
                    ("status", e.status.to_string()),
                    ("response", e.result.as_ref().map(Value::to_string).unwrap_or_default()),
                ])
            })?;
        }
    }
    Ok(0)
}

/// What an inquiry's schema asks for, in a few words: `ok (boolean, required)`.
fn expects(parameters: &Value) -> String {
    let schema = attune_core::action::inquiry_schema(parameters);
    let required: BTreeSet<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.and_then(|s| s.get("properties")).and_then(Value::as_object) else {
        return "any object".into();
    };
    props
        .iter()
        .map(|(k, p)| {
            let ty = p.get("type").and_then(Value::as_str).unwrap_or("any");
            let req = if required.contains(k.as_str()) { ", required" } else { "" };
            format!("{k} ({ty}{req})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line of a tree: depth, and the execution.
pub struct Node {
    pub depth: usize,
    pub execution: Execution,
}

/// The execution and its descendants (a workflow's tasks, theirs …), depth first, children in the
/// order they were created.
pub async fn tree(ctx: &Ctx, root: Uuid) -> anyhow::Result<Vec<Node>> {
    let top = ctx.client.get_execution(root).await?;
    // Executions do not carry their action's runtime; the loaded actions say which are workflows.
    let workflows: BTreeSet<String> = ctx
        .client
        .list_actions()
        .await?
        .into_iter()
        .filter(|a| a.runtime == Runtime::Workflow)
        .map(|a| a.action_ref.to_string())
        .collect();
    let mut out = Vec::new();
    let mut stack = vec![(0usize, top)];
    while let Some((depth, e)) = stack.pop() {
        let is_workflow = workflows.contains(e.action_ref.as_str()) || depth == 0;
        let id = e.id;
        out.push(Node { depth, execution: e });
        if is_workflow && depth < 16 {
            let kids = ctx.client.execution_children(id).await?.items;
            for k in kids.into_iter().rev() {
                stack.push((depth + 1, k));
            }
        }
    }
    Ok(out)
}

fn duration(e: &Execution, now: i64) -> String {
    match (e.started_at, e.finished_at) {
        (Some(s), Some(f)) => format!("{}ms", f.millis() - s.millis()),
        (Some(s), None) => format!("{}s…", (now - s.millis()) / 1000),
        _ => String::new(),
    }
}

pub fn tree_table(nodes: &[Node]) -> Table {
    let now = Timestamp::now().millis();
    let mut t = Table::new(vec!["TASK", "ACTION", "STATUS", "TOOK", "ID", "NOTE"]);
    for n in nodes {
        let e = &n.execution;
        let name = e.child_key.clone().unwrap_or_else(|| "(workflow)".into());
        let note = if e.status == ExecutionStatus::Pending {
            format!("waiting: attune inquiry respond {} …", e.id)
        } else {
            e.error
                .as_ref()
                .and_then(|x| x.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(60)
                .collect()
        };
        t.row(vec![
            format!("{}{name}", "  ".repeat(n.depth)),
            e.action_ref.to_string(),
            e.status.to_string(),
            duration(e, now),
            e.id.to_string(),
            note,
        ]);
    }
    t
}

pub async fn show_tree(ctx: &Ctx, id: Uuid) -> anyhow::Result<i32> {
    let nodes = tree(ctx, id).await?;
    let json: Vec<&Execution> = nodes.iter().map(|n| &n.execution).collect();
    print(ctx.output, &json, || tree_table(&nodes))?;
    Ok(0)
}

/// Pending inquiries under `id` not yet announced, announced now on stderr with how to answer.
pub async fn announce_inquiries(ctx: &Ctx, id: Uuid, told: &mut BTreeSet<Uuid>) -> anyhow::Result<()> {
    for n in tree(ctx, id).await? {
        let e = &n.execution;
        if e.status == ExecutionStatus::Pending && told.insert(e.id) {
            let prompt = e.parameters.get("prompt").and_then(Value::as_str).unwrap_or("a response is needed");
            eprintln!(
                "\n{} waits for a person: {prompt}\n  expects {}\n  answer with: attune inquiry respond {} key=value …",
                e.child_key.as_deref().unwrap_or("an inquiry"),
                expects(&e.parameters),
                e.id
            );
        }
    }
    Ok(())
}

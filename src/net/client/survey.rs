//! Surveys: hearing from every known peer (docs/DESIGN.md, "A complete survey").

use super::*;

impl MeshStore {
    pub(super) fn verify_peers(&self, progress: &dyn Fn(u64)) -> Result<Scrubbed, StoreError> {
        // Every known peer is settled first, so none is skipped for being slow
        // to connect; those the survey could not hear from are reported.
        let survey = self.survey()?;
        let mut out = Scrubbed {
            skipped: survey
                .unreachable
                .into_iter()
                .chain(survey.silent)
                .collect(),
            ..Default::default()
        };
        let mut checked = 0u64;
        let table = self.client.storage_peers();
        for (tag, entry) in table.iter().filter(|(t, _)| survey.answered.contains(*t)) {
            let peer = entry.id;
            let mut after = None;
            loop {
                let why = match self.client.ask(peer, Request::Verify { after, max: 256 }) {
                    Ok(Response::Verified {
                        checked: c,
                        bad,
                        last,
                        more,
                    }) => {
                        checked += c as u64;
                        progress(checked);
                        if !bad.is_empty() {
                            tracing::warn!("scrub: peer {peer} holds {} corrupt shards", bad.len());
                            // The peer drops its bad copies; repair puts good ones back.
                            let _ = self.client.ask(peer, Request::Delete { ids: bad.clone() });
                            for id in &bad {
                                self.forget(id, *tag);
                            }
                            out.bad.extend(bad);
                        }
                        after = last;
                        if !more {
                            break;
                        }
                        continue;
                    }
                    Ok(other) => format!("unexpected answer: {other}"),
                    Err(e) => e,
                };
                tracing::warn!("scrub: peer {peer}: {why}");
                out.skipped.push(note(entry, format!("verify: {why}")));
                break;
            }
        }
        if !out.bad.is_empty() {
            self.unplaced.store(true, Ordering::Relaxed);
        }
        Ok(out)
    }

    /// One survey: every known storage peer ends answered, unreachable or
    /// silent (docs/DESIGN.md, "A complete survey"); peers found meanwhile are
    /// included. Inventory pages of all peers are asked for in parallel.
    pub(super) fn run_survey(&self) -> Result<Survey, StoreError> {
        /// Shards a peer may list beyond its own count (puts landing meanwhile).
        const SLACK: u64 = 1024;
        enum Stage {
            Dialing {
                since: Instant,
                failures: u64,
            },
            /// Asked how many shards it holds: its inventory may hold no more.
            Counting {
                since: Instant,
            },
            Listing {
                since: Instant,
                after: Option<ShardId>,
                listed: u64,
                cap: u64,
            },
            Answered,
            Unreachable(String),
            Silent(String),
        }
        // Shards stored while the inventories are taken are recorded here, so
        // that an inventory taken just before they landed does not unlist them.
        *lock(&self.touched) = Some(std::collections::HashSet::new());
        // Each page sweeps its range of the index (docs/DESIGN.md, "Holder
        // sets and the holder index"): every entry made before now must be
        // in the sorted part the sweep walks.
        lock(&self.loc).settle();
        self.client.redial();
        let (tx, rx) = smpsc::channel::<(usize, Result<Response, String>)>();
        let ask = |peer: PeerId, tag: usize, req: Request| {
            let tx = tx.clone();
            self.client.request(
                peer,
                req,
                Box::new(move |r| {
                    let _ = tx.send((tag, r));
                }),
            );
        };
        let mut stage: HashMap<usize, (PeerEntry, Stage)> = HashMap::new();
        // Connected peers not yet identified, since when: they may be storage
        // peers found through the DHT.
        let mut classifying: HashMap<PeerId, Instant> = HashMap::new();
        let start = Instant::now();
        loop {
            let now = Instant::now();
            let table = self.client.storage_peers();
            // A bootstrap address that identified as something else is no peer.
            stage.retain(|t, _| table.iter().any(|(tag, _)| tag == t));
            for (tag, p) in table {
                let (entry, st) = stage.entry(tag).or_insert_with(|| {
                    let dialing = Stage::Dialing {
                        since: now,
                        failures: p.dial_failures,
                    };
                    (p.clone(), dialing)
                });
                *entry = p;
                match st {
                    Stage::Dialing { since, failures } => {
                        if entry.connected {
                            ask(entry.id, tag, Request::Stat);
                            *st = Stage::Counting { since: now };
                        } else if entry.dial_failures > *failures {
                            *st = Stage::Unreachable(entry.last_dial_error.clone());
                        } else if since.elapsed() >= self.t.survey_dial_wait {
                            *st = Stage::Unreachable(format!(
                                "no connection within {}s",
                                self.t.survey_dial_wait.as_secs_f32()
                            ));
                        }
                    }
                    Stage::Counting { since } | Stage::Listing { since, .. }
                        if since.elapsed() >= self.t.survey_page_wait =>
                    {
                        *st = Stage::Silent(format!(
                            "no answer to an inventory request within {}s",
                            self.t.survey_page_wait.as_secs_f32()
                        ));
                    }
                    _ => {}
                }
            }
            let busy = |s: &Stage| {
                matches!(
                    s,
                    Stage::Dialing { .. } | Stage::Counting { .. } | Stage::Listing { .. }
                )
            };
            // Peers may still be found: the DHT's first walk, and peers connected
            // but not yet identified, each waited for no longer than a dial.
            let discovering = !self.client.shared.kad_settled.load(Ordering::Relaxed)
                && start.elapsed() < self.t.survey_dial_wait;
            let classifying_now = self.client.unclassified();
            classifying.retain(|id, _| classifying_now.contains(id));
            let identifying = classifying_now
                .into_iter()
                .any(|id| classifying.entry(id).or_insert(now).elapsed() < self.t.survey_dial_wait);
            if !stage.values().any(|(_, s)| busy(s)) && !discovering && !identifying {
                break;
            }
            let first = rx.recv_timeout(Duration::from_millis(20)).ok();
            for (tag, r) in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                let Some((entry, st)) = stage.get_mut(&tag) else {
                    continue;
                };
                let list = |after: Option<ShardId>| Request::List {
                    after,
                    max: MAX_IDS as u32,
                };
                *st = match (&*st, r) {
                    (Stage::Counting { .. }, Ok(Response::Stat { shards, .. })) => {
                        ask(entry.id, tag, list(None));
                        Stage::Listing {
                            since: Instant::now(),
                            after: None,
                            listed: 0,
                            // Shards stored while it lists may add some.
                            cap: shards.saturating_add(shards / 8 + SLACK),
                        }
                    }
                    (
                        &Stage::Listing {
                            after, listed, cap, ..
                        },
                        Ok(Response::List { shards, more }),
                    ) => {
                        let listed = listed + shards.len() as u64;
                        // A page must go on from where the last ended, in order,
                        // no longer than asked, and the whole no longer than the
                        // peer's own count: an endless or lying inventory is cut.
                        let ordered = shards.windows(2).all(|w| w[0].0 < w[1].0)
                            && after.is_none_or(|a| shards.first().is_none_or(|s| s.0 > a));
                        if !ordered || shards.len() > MAX_IDS || (more && shards.is_empty()) {
                            Stage::Silent("sent an inventory page out of order: cut off".into())
                        } else if listed > cap {
                            Stage::Silent(format!(
                                "listed more shards than the {} it reported holding: cut off",
                                (cap - SLACK) * 8 / 9
                            ))
                        } else {
                            let last = shards.last().map(|sh| sh.0);
                            let ids: Vec<ShardId> = shards.into_iter().map(|sh| sh.0).collect();
                            // The last page's range runs to the end of the ids.
                            let upto = if more { last } else { None };
                            self.listed(tag, after.as_ref(), upto.as_ref(), &ids);
                            if more {
                                ask(entry.id, tag, list(last));
                                Stage::Listing {
                                    since: Instant::now(),
                                    after: last,
                                    listed,
                                    cap,
                                }
                            } else {
                                Stage::Answered
                            }
                        }
                    }
                    // Late: the peer was counted already.
                    (
                        Stage::Dialing { .. }
                        | Stage::Answered
                        | Stage::Unreachable(_)
                        | Stage::Silent(_),
                        _,
                    ) => continue,
                    (_, Ok(r @ Response::Refused(_))) => Stage::Silent(r.to_string()),
                    (_, Ok(other)) => Stage::Silent(format!("unexpected answer: {other}")),
                    (_, Err(e)) => Stage::Silent(e),
                };
            }
        }
        let mut out = Survey {
            answered: self.local(),
            ..Default::default()
        };
        let res = match &self.local {
            Some(l) => {
                let mut ids = Vec::new();
                l.for_each(&mut |info| ids.push(info.id)).map(|()| {
                    ids.sort_unstable_by_key(|id| id.0);
                    self.listed(Holders::LOCAL, None, None, &ids);
                })
            }
            None => Ok(()),
        };
        *lock(&self.touched) = None;
        res?;
        let mut tags: Vec<_> = stage.into_iter().collect();
        tags.sort_by_key(|(t, _)| *t);
        for (tag, (entry, st)) in tags {
            match st {
                Stage::Answered => {
                    out.answered.insert(tag);
                }
                Stage::Unreachable(why) => {
                    tracing::info!("survey: peer {} unreachable: {why}", entry.id);
                    out.unreachable.push(note(&entry, why));
                }
                Stage::Silent(why) => {
                    tracing::info!("survey: peer {} did not answer: {why}", entry.id);
                    out.silent.push(note(&entry, why));
                }
                Stage::Dialing { .. } | Stage::Counting { .. } | Stage::Listing { .. } => {
                    unreachable!("survey ended")
                }
            }
        }
        // What the peers that answered did not list, they do not hold (their
        // pages said so as they came); other peers keep their entries (their
        // shards count again if they return).
        Ok(out)
    }

    /// One inventory page of `tag`: it holds exactly `ids` of the shards in
    /// (`after`, `upto`], save those stored since the survey began.
    fn listed(&self, tag: usize, after: Option<&ShardId>, upto: Option<&ShardId>, ids: &[ShardId]) {
        let touched = lock(&self.touched);
        let keep = |k: &HolderKey| touched.as_ref().is_some_and(|t| t.contains(k));
        lock(&self.loc).inventory(tag, after, upto, ids, &keep);
    }
}

// Lookaside web page: vanilla ES modules over the public HTTP API (no build step). Each module
// has one job; this one wires them together.
import { $ } from "./dom.js";
import { rememberToken } from "./api.js";
import { setUpTabs } from "./tabs.js";
import { setUpClipInput } from "./clip.js";
import { setUpDrop } from "./drop.js";
import { toggleRecording } from "./record.js";
import { loadAdapterChoices, setUpClassify } from "./classify.js";
import { loadExamples } from "./examples.js";
import { setUpSnippet } from "./snippet.js";
import { watchSpans } from "./timeline.js";
import { loadAdapterTable, setUpAdapters } from "./adapters.js";
import { loadAvChoices, setUpAv } from "./av.js";
import { loadLiveChoices, refreshLiveChoices, setUpLive } from "./live.js";

function start() {
  setUpTabs((tab) => {
    if (tab.id === "tab-adapters") loadAdapterTable();
    if (tab.id === "tab-av") loadAvChoices();
    if (tab.id === "tab-live") loadLiveChoices();
  });
  rememberToken($("#admin-token"));
  setUpSnippet();
  setUpClipInput();
  setUpDrop();
  setUpClassify();
  watchSpans($("#player"));
  $("#record-button").addEventListener("click", toggleRecording);
  setUpAdapters(() => Promise.all([loadAdapterChoices(), loadAvChoices(), refreshLiveChoices()]));
  setUpAv();
  setUpLive();
  loadAdapterChoices();
  loadExamples();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
